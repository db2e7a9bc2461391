"""MergeAR's building blocks in PyTorch (mirror of `mergevq_jax/models/ar/blocks.py`):
sub-code split/join, RMSNorm, 2D RoPE, one transformer block (qkv, attention, output +
SwiGLU) and the factorised cross-entropy.

Everything computes in float32. Shapes: x (B, T, D); heads-major q/k/v (B, H, T, Dh);
codes int64 (PyTorch's index dtype). One block's parameters are a `LayerParams` of
tensors sliced from the stacked (layers, ...) parameters of `MergeAR.layers`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def split_codes(codes: torch.Tensor, sub_code_bits) -> list[torch.Tensor]:
  """Code indices (...,) -> sub-codes, most significant bits first: [(...,) int64, ...]."""
  codes = codes.long()
  out, shift = [], sum(sub_code_bits)
  for bits in sub_code_bits:
    shift -= bits
    out.append((codes >> shift) & ((1 << bits) - 1))
  return out


def join_codes(sub_codes, sub_code_bits) -> torch.Tensor:
  """Inverse of `split_codes`: sub-codes [(...,), ...] -> codes (...,) int64."""
  code = torch.zeros_like(sub_codes[0], dtype=torch.long)
  for sub, bits in zip(sub_codes, sub_code_bits):
    code = (code << bits) | sub.long()
  return code


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
  """x (..., D) * rsqrt(mean(x^2) + eps) * scale (D,)."""
  x = x.float()
  return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * scale


def rope_angles(grid, head_dim: int, base: float) -> torch.Tensor:
  """(L, head_dim // 2) angles of LlamaGen's 2D RoPE for raster positions: the first
  head_dim/4 pairs rotate with the row, the next head_dim/4 with the column."""
  quarter = head_dim // 4
  exponent = torch.arange(quarter, dtype=torch.float32) * 2 / (head_dim // 2)
  freqs = 1.0 / torch.pow(torch.tensor(float(base), dtype=torch.float32), exponent)
  rows, cols = torch.meshgrid(torch.arange(int(grid[0]), dtype=torch.float32),
                              torch.arange(int(grid[1]), dtype=torch.float32), indexing="ij")
  return torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
  """Rotate interleaved pairs (x[2i], x[2i+1]): x (B, T, H, Dh), angles (B or 1, T, Dh/2)."""
  pairs = x.float().reshape(*x.shape[:-1], -1, 2)
  cos, sin = torch.cos(angles)[:, :, None], torch.sin(angles)[:, :, None]
  a, b = pairs[..., 0], pairs[..., 1]
  return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(x.shape)


class LayerParams(NamedTuple):
  """One block's parameters (or all blocks', stacked on a leading layers axis)."""
  attn_norm: torch.Tensor   # (D,)
  wqkv: torch.Tensor        # (D, 3, H, Dh)
  wo: torch.Tensor          # (H, Dh, D)
  ffn_norm: torch.Tensor    # (D,)
  w13: torch.Tensor         # (D, 2, F): SwiGLU gate and up projections
  w2: torch.Tensor          # (F, D)

  def layer(self, i: int) -> "LayerParams":
    """Block i of stacked parameters."""
    return LayerParams(*(p[i] for p in self))


def block_qkv(p: LayerParams, x: torch.Tensor, angles: torch.Tensor, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """x (B, T, D) -> rotated q, k and v, each heads-major (B, H, T, Dh)."""
  b, t, d = x.shape
  heads, head_dim = p.wo.shape[0], p.wo.shape[1]
  h = rms_norm(x, p.attn_norm, eps).reshape(b * t, d)
  qkv = (h @ p.wqkv.reshape(d, -1)).reshape(b, t, 3, heads, head_dim)
  q, k = apply_rope(qkv[:, :, 0], angles), apply_rope(qkv[:, :, 1], angles)
  return q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor
           ) -> torch.Tensor:
  """Softmax attention: q (B, H, T, Dh), k/v (B, H, S, Dh), visible (B, T, S) bool ->
  (B, H, T, Dh). Every query row must see at least one key (the prefix)."""
  scale = q.shape[-1] ** -0.5
  logits = torch.einsum("bhtc,bhsc->bhts", q, k) * scale
  logits = logits.masked_fill(~visible[:, None], torch.finfo(torch.float32).min)
  return torch.einsum("bhts,bhsc->bhtc", torch.softmax(logits, dim=-1), v)


def block_finish(p: LayerParams, x: torch.Tensor, o: torch.Tensor, eps: float
                 ) -> torch.Tensor:
  """Attention output o (B, H, T, Dh) projection + residual, then the SwiGLU FFN residual:
  x (B, T, D) -> (B, T, D)."""
  b, t, d = x.shape
  o = o.transpose(1, 2).reshape(b * t, -1)
  x = x + (o @ p.wo.reshape(-1, d)).reshape(b, t, d)
  h = rms_norm(x, p.ffn_norm, eps).reshape(b * t, d)
  gate_up = (h @ p.w13.reshape(d, -1)).reshape(b * t, 2, -1)
  hidden = F.silu(gate_up[:, 0]) * gate_up[:, 1]
  return x + (hidden @ p.w2).reshape(b, t, d)


def block_forward(p: LayerParams, x: torch.Tensor, angles: torch.Tensor,
                  visible: torch.Tensor, eps: float) -> torch.Tensor:
  """One block over a whole sequence: x (B, T, D), angles (1, T, Dh/2), visible (B, T, T)."""
  q, k, v = block_qkv(p, x, angles, eps)
  return block_finish(p, x, attend(q, k, v, visible), eps)


def cross_entropy(logits: list[torch.Tensor], codes: torch.Tensor, sub_code_bits
                  ) -> tuple[torch.Tensor, dict]:
  """Mean over positions of -log p(code) = sum of the sub-code cross-entropies (nats).
  logits: one (..., 2^bits_k) tensor per sub-code; codes (...,). Returns (loss,
  {'ce_k', 'acc_k', 'acc': whole-code accuracy})."""
  subs = split_codes(codes, sub_code_bits)
  total, metrics, all_right = 0.0, {}, True
  for k, (lg, s) in enumerate(zip(logits, subs)):
    logp = torch.log_softmax(lg.float(), dim=-1)
    ce = -torch.gather(logp, -1, s[..., None]).mean()
    right = torch.argmax(lg, dim=-1) == s
    metrics[f"ce_{k}"], metrics[f"acc_{k}"] = ce, right.float().mean()
    all_right = all_right & right
    total = total + ce
  metrics["acc"] = all_right.float().mean()
  return total, metrics
