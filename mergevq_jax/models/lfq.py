"""Look-up Free Quantization (LFQ): sign quantisation over d bits, codebook 2^d.

Pure `jnp` functions. Conventions: z has shape (..., d); the code of z is
sum_j 2^j [z_j > 0] (bit j is channel j, least significant first); quantised values
are in {-1, +1}.

Entropy loss. With p(c|z) = softmax_c(2 z.c / tau) over all c in {-1,+1}^d, p factorises
over bits, p_j(+1) = sigmoid(4 z_j / tau), so
  * the per-token entropy is exactly sum_j H_binary(p_j);
  * the batch-mean distribution over 2^d codes is exactly (P_a^T P_b) / N, where P_a and
    P_b (N x 2^{d_a}, N x 2^{d_b}) are each token's distribution over the first d_a and
    last d_b bits. One matmul with 2^{d_a} x 2^{d_b} outputs; never N x 2^d.
`entropy_loss_naive` materialises N x 2^d logits and exists for tests and benchmarks.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


class LFQOutput(NamedTuple):
  quantized: jax.Array   # (..., d) in {-1,+1}, straight-through gradient to z
  indices: jax.Array     # (...) int32 code indices in [0, 2^d)
  commit_loss: jax.Array  # scalar
  per_token_entropy: jax.Array  # scalar, mean over tokens of H(p(c|z))
  batch_entropy: jax.Array      # scalar, H(mean_n p(c|z_n))
  entropy_loss: jax.Array       # per_token_weight * per_token - batch_weight * batch


# ----------------------------------------------------------------------------- codes


def quantize(z: jax.Array) -> jax.Array:
  """sign(z) in {-1,+1} (0 maps to -1), with the straight-through estimator."""
  q = jnp.where(z > 0, 1.0, -1.0).astype(z.dtype)
  return z + jax.lax.stop_gradient(q - z)


def bits_to_indices(bits: jax.Array) -> jax.Array:
  """(..., d) values (sign taken: > 0 is bit 1) -> (...) int32 indices."""
  d = bits.shape[-1]
  if d > 31:
    raise ValueError(f"at most 31 bits fit an int32 code index, got {d}")
  weights = (2 ** jnp.arange(d, dtype=jnp.int32))
  return jnp.sum((bits > 0).astype(jnp.int32) * weights, axis=-1)


def indices_to_bits(indices: jax.Array, num_bits: int, dtype=jnp.float32) -> jax.Array:
  """(...) int indices -> (..., d) values in {-1,+1}."""
  bits = (indices[..., None] >> jnp.arange(num_bits, dtype=jnp.int32)) & 1
  return (2 * bits - 1).astype(dtype)


def commitment_loss(z: jax.Array, q: jax.Array) -> jax.Array:
  """mean (z - stop_grad(q))^2."""
  return jnp.mean(jnp.square(z.astype(jnp.float32) - jax.lax.stop_gradient(q).astype(jnp.float32)))


# ----------------------------------------------------------------------------- entropy


def _bit_logits(z: jax.Array, tau: float) -> jax.Array:
  """logit of p_j(+1) = sigmoid(4 z_j / tau), as (N, d) float32."""
  return (4.0 / tau) * z.reshape(-1, z.shape[-1]).astype(jnp.float32)


def _binary_entropy_from_logits(x: jax.Array) -> jax.Array:
  """H(sigmoid(x)) in nats, stable for large |x|."""
  p = jax.nn.sigmoid(x)
  return p * jax.nn.softplus(-x) + (1.0 - p) * jax.nn.softplus(x)


def _entropy(p: jax.Array, axis=None) -> jax.Array:
  """-sum p log p, with 0 log 0 = 0."""
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


def per_token_entropy(z: jax.Array, tau: float = 0.01) -> jax.Array:
  """Mean over tokens of H(p(c|z)) = sum over bits of binary entropies. z: (..., d)."""
  return jnp.mean(jnp.sum(_binary_entropy_from_logits(_bit_logits(z, tau)), axis=-1))


def sub_code_log_probs(logits: jax.Array) -> jax.Array:
  """(N, k) bit logits -> (N, 2^k) log p(sub-code), sub-code bits LSB first."""
  k = logits.shape[-1]
  bits = indices_to_bits(jnp.arange(2 ** k), k)  # (2^k, k) in {-1,+1}
  # log sigmoid(s x) for the sign s of each bit, summed over bits: one matmul plus a
  # correction, using log sigmoid(s x) = s x / 2 - log(2 cosh(x / 2)).
  # HIGHEST: the logits are ~400 z; a default-precision matmul rounds its inputs to
  # bf16 on TPU (TF32 on GPU), an error of several nats per sub-code.
  log_norm = jnp.sum(jnp.logaddexp(logits / 2, -logits / 2), axis=-1, keepdims=True)
  return 0.5 * jnp.matmul(logits, bits.T, precision=HIGHEST) - log_norm


def batch_entropy_exact(z: jax.Array, tau: float = 0.01) -> jax.Array:
  """H(mean_n p(c|z_n)) over all 2^d codes, exactly, via the half-split matmul."""
  logits = _bit_logits(z, tau)
  n, d = logits.shape
  d_a = d // 2
  if d_a == 0:
    mean = jnp.mean(jax.nn.sigmoid(logits), axis=0)
    return _entropy(jnp.stack([1 - mean, mean]))
  p_a = jnp.exp(sub_code_log_probs(logits[:, :d_a]))   # (N, 2^d_a), low bits
  p_b = jnp.exp(sub_code_log_probs(logits[:, d_a:]))   # (N, 2^d_b), high bits
  mean = jnp.matmul(p_a.T, p_b, precision=HIGHEST) / n  # (2^d_a, 2^d_b)
  return _entropy(mean)


def batch_entropy_bit_groups(z: jax.Array, tau: float = 0.01, group_size: int = 9
                             ) -> jax.Array:
  """Approximation: sum over bit groups of H(mean_n p(group code|z_n)) (MAGVIT-v2 style).

  Treats groups as independent in the batch-mean distribution, which upper-bounds the
  exact entropy. Memory N x 2^group_size.
  """
  logits = _bit_logits(z, tau)
  d = logits.shape[-1]
  total = jnp.zeros((), jnp.float32)
  for start in range(0, d, group_size):
    p = jnp.exp(sub_code_log_probs(logits[:, start:start + group_size]))
    total = total + _entropy(jnp.mean(p, axis=0))
  return total


def entropy_loss_naive(z: jax.Array, tau: float = 0.01) -> tuple[jax.Array, jax.Array]:
  """Reference: (per-token entropy, batch entropy) from N x 2^d logits. Tests only."""
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  d = flat.shape[-1]
  codes = indices_to_bits(jnp.arange(2 ** d), d)
  logits = 2.0 * jnp.matmul(flat, codes.T, precision=HIGHEST) / tau
  p = jax.nn.softmax(logits, axis=-1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  per_token = jnp.mean(-jnp.sum(p * logp, axis=-1))
  return per_token, _entropy(jnp.mean(p, axis=0))


def lfq(z: jax.Array, *, tau: float = 0.01, per_token_weight: float = 1.0,
        batch_weight: float = 1.0, entropy_mode: str = "exact", group_size: int = 9
        ) -> LFQOutput:
  """Quantise z (..., d) and compute all LFQ losses.

  entropy_mode: "exact" (half-split matmul) or "bit_groups" (approximation).
  """
  q = quantize(z)
  if entropy_mode == "exact":
    h_batch = batch_entropy_exact(z, tau)
  elif entropy_mode == "bit_groups":
    h_batch = batch_entropy_bit_groups(z, tau, group_size)
  else:
    raise ValueError(f"entropy_mode must be 'exact' or 'bit_groups', got {entropy_mode!r}")
  h_tok = per_token_entropy(z, tau)
  return LFQOutput(
      quantized=q,
      indices=bits_to_indices(z),
      commit_loss=commitment_loss(z, q),
      per_token_entropy=h_tok,
      batch_entropy=h_batch,
      entropy_loss=per_token_weight * h_tok - batch_weight * h_batch,
  )


# ----------------------------------------------------------------------------- usage
