"""Look-up Free Quantization (LFQ) in PyTorch, the twin of `mergevq_jax.models.lfq`.

z (..., d): the code is sum_j 2^j [z_j > 0] (bit j = channel j, least significant first);
quantised values are in {-1, +1} (0 maps to -1). With p(c|z) = softmax_c(2 z.c / tau), p
factorises over bits, p_j(+1) = sigmoid(4 z_j / tau): the per-token entropy is a sum of
binary entropies, and the batch-mean distribution over 2^d codes is P_a^T P_b / N over the
low and high halves of the bits (exact), or a sum over bit groups (approximation).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LFQOutput(NamedTuple):
  quantized: torch.Tensor          # (..., d) in {-1,+1}, straight-through gradient to z
  indices: torch.Tensor            # (...) int64 code indices in [0, 2^d)
  commit_loss: torch.Tensor        # scalar, mean (z - q)^2
  per_token_entropy: torch.Tensor  # scalar, mean over tokens of H(p(c|z))
  batch_entropy: torch.Tensor      # scalar, H(mean_n p(c|z_n))
  entropy_loss: torch.Tensor       # per_token_weight * per_token - batch_weight * batch


def quantize(z: torch.Tensor) -> torch.Tensor:
  """sign(z) in {-1,+1} (0 maps to -1), with the straight-through estimator."""
  q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
  return z + (q - z).detach()


def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
  """(..., d) values (> 0 is bit 1) -> (...) int64 indices."""
  d = bits.shape[-1]
  if d > 31:
    raise ValueError(f"at most 31 bits fit an int32 code index, got {d}")
  weights = 2 ** torch.arange(d, device=bits.device)
  return ((bits > 0).long() * weights).sum(dim=-1)


def indices_to_bits(indices: torch.Tensor, num_bits: int, dtype=torch.float32) -> torch.Tensor:
  """(...) integer indices -> (..., d) values in {-1,+1}."""
  shifts = torch.arange(num_bits, device=indices.device)
  bits = (indices.long()[..., None] >> shifts) & 1
  return (2 * bits - 1).to(dtype)


def commitment_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
  """mean (z - stop_grad(q))^2."""
  return torch.mean(torch.square(z.float() - q.detach().float()))


def _bit_logits(z: torch.Tensor, tau: float) -> torch.Tensor:
  """Logit of p_j(+1) = sigmoid(4 z_j / tau), as (N, d) float32."""
  return (4.0 / tau) * z.reshape(-1, z.shape[-1]).float()


def _binary_entropy_from_logits(x: torch.Tensor) -> torch.Tensor:
  """H(sigmoid(x)) in nats, stable for large |x|."""
  p = torch.sigmoid(x)
  return p * F.softplus(-x) + (1.0 - p) * F.softplus(x)


def _entropy(p: torch.Tensor) -> torch.Tensor:
  """-sum p log p over every element, with 0 log 0 = 0."""
  safe = torch.where(p > 0, p, torch.ones_like(p))
  return -torch.sum(torch.where(p > 0, p * torch.log(safe), torch.zeros_like(p)))


def per_token_entropy(z: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
  """Mean over tokens of H(p(c|z)) = sum over bits of binary entropies. z: (..., d)."""
  return torch.mean(torch.sum(_binary_entropy_from_logits(_bit_logits(z, tau)), dim=-1))


def sub_code_log_probs(logits: torch.Tensor) -> torch.Tensor:
  """(N, k) bit logits -> (N, 2^k) log p(sub-code), sub-code bits LSB first."""
  k = logits.shape[-1]
  bits = indices_to_bits(torch.arange(2 ** k, device=logits.device), k)   # (2^k, k)
  log_norm = torch.logaddexp(logits / 2, -logits / 2).sum(dim=-1, keepdim=True)
  return 0.5 * (logits @ bits.T) - log_norm


def batch_entropy_exact(z: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
  """H(mean_n p(c|z_n)) over all 2^d codes, exactly, via the half-split matmul."""
  logits = _bit_logits(z, tau)
  n, d = logits.shape
  d_a = d // 2
  if d_a == 0:
    mean = torch.sigmoid(logits).mean(dim=0)
    return _entropy(torch.stack([1 - mean, mean]))
  p_a = torch.exp(sub_code_log_probs(logits[:, :d_a]))   # (N, 2^d_a), low bits
  p_b = torch.exp(sub_code_log_probs(logits[:, d_a:]))   # (N, 2^d_b), high bits
  return _entropy((p_a.T @ p_b) / n)


def batch_entropy_bit_groups(z: torch.Tensor, tau: float = 0.01, group_size: int = 9
                             ) -> torch.Tensor:
  """Sum over bit groups of H(mean_n p(group code|z_n)) (MAGVIT-v2 style approximation)."""
  logits = _bit_logits(z, tau)
  total = torch.zeros((), device=z.device)
  for start in range(0, logits.shape[-1], group_size):
    p = torch.exp(sub_code_log_probs(logits[:, start:start + group_size]))
    total = total + _entropy(p.mean(dim=0))
  return total


def lfq(z: torch.Tensor, *, tau: float = 0.01, per_token_weight: float = 1.0,
        batch_weight: float = 1.0, entropy_mode: str = "exact", group_size: int = 9
        ) -> LFQOutput:
  """Quantise z (..., d) and compute all LFQ losses (entropy_mode 'exact' or 'bit_groups')."""
  q = quantize(z)
  if entropy_mode == "exact":
    h_batch = batch_entropy_exact(z, tau)
  elif entropy_mode == "bit_groups":
    h_batch = batch_entropy_bit_groups(z, tau, group_size)
  else:
    raise ValueError(f"entropy_mode must be 'exact' or 'bit_groups', got {entropy_mode!r}")
  h_tok = per_token_entropy(z, tau)
  return LFQOutput(quantized=q, indices=bits_to_indices(z), commit_loss=commitment_loss(z, q),
                   per_token_entropy=h_tok, batch_entropy=h_batch,
                   entropy_loss=per_token_weight * h_tok - batch_weight * h_batch)
