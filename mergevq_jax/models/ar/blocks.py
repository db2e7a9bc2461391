"""MergeAR's building blocks as pure functions: sub-code split/join, RMSNorm, 2D RoPE,
one transformer block (qkv, attention, output + SwiGLU), and the factorised cross-entropy.

The training forward (`mergear.MergeAR`) and the cached decoder (`decode`) compute with
the same functions. Shapes: x (B, T, D); heads-major q/k/v (B, H, T, Dh); codes int32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mergevq_jax.sharding import constrain


def split_codes(codes: jax.Array, sub_code_bits) -> list[jax.Array]:
  """Code indices -> sub-codes, most significant bits first: [(...,) int32, ...]."""
  out, shift = [], sum(sub_code_bits)
  for bits in sub_code_bits:
    shift -= bits
    out.append((codes >> shift) & ((1 << bits) - 1))
  return out


def join_codes(sub_codes, sub_code_bits) -> jax.Array:
  """Inverse of `split_codes`."""
  code = jnp.zeros_like(sub_codes[0])
  for sub, bits in zip(sub_codes, sub_code_bits):
    code = (code << bits) | sub
  return code


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale).astype(x.dtype)


def rope_angles(grid: tuple[int, int], head_dim: int, base: float) -> jax.Array:
  """(L, head_dim // 2) rotation angles of LlamaGen's 2D RoPE for raster positions: the
  first head_dim/4 pairs rotate with the row, the next head_dim/4 with the column."""
  quarter = head_dim // 4
  freqs = 1.0 / base ** (jnp.arange(quarter, dtype=jnp.float32) * 2 / (head_dim // 2))
  rows, cols = jnp.meshgrid(jnp.arange(grid[0], dtype=jnp.float32),
                            jnp.arange(grid[1], dtype=jnp.float32), indexing="ij")
  return jnp.concatenate([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotate interleaved pairs (x[2i], x[2i+1]): x (B, T, H, Dh), angles (B or 1, T, Dh/2)."""
  x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  a, b = x32[..., 0], x32[..., 1]
  return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape).astype(
      x.dtype)


class LayerParams(NamedTuple):
  """One block's parameter arrays (or all blocks', stacked on a leading layers axis)."""
  attn_norm: jax.Array   # (D,)
  wqkv: jax.Array        # (D, 3, H, Dh)
  wo: jax.Array          # (H, Dh, D)
  ffn_norm: jax.Array    # (D,)
  w13: jax.Array         # (D, 2, F): SwiGLU gate and up projections
  w2: jax.Array          # (F, D)


def block_qkv(p: LayerParams, x: jax.Array, angles: jax.Array, eps: float
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x (B, T, D) -> rotated q, k and v, each heads-major (B, H, T, Dh).

  Projections are plain 2-D matmuls on the (D, 3*H*Dh) view of the kernel: with the
  multi-axis einsum, XLA:CPU transposed the kernels inside the decode loop, every step.
  """
  b, t, d = x.shape
  heads, head_dim = p.wo.shape[0], p.wo.shape[1]
  h = rms_norm(x, p.attn_norm, eps).reshape(b * t, d)
  qkv = (h @ p.wqkv.reshape(d, -1).astype(x.dtype)).reshape(b, t, 3, heads, head_dim)
  q, k = apply_rope(qkv[:, :, 0], angles), apply_rope(qkv[:, :, 1], angles)
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, qkv[:, :, 2]))
  return constrain(q, ("batch", "act_heads", "length", None)), k, v


def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
  """Softmax attention in float32: q (B, H, T, Dh), k/v (B, H, S, Dh), visible (B, T, S)
  bool -> (B, H, T, Dh). Every query row must see at least one key (the prefix)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bhtc,bhsc->bhts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(visible[:, None], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhts,bhsc->bhtc", weights, v)


def block_finish(p: LayerParams, x: jax.Array, o: jax.Array, eps: float) -> jax.Array:
  """Attention output (B, H, T, Dh) projection + residual, then the SwiGLU FFN residual."""
  b, t, d = x.shape
  o = jnp.swapaxes(o, 1, 2).reshape(b * t, -1)
  x = x + (o @ p.wo.reshape(-1, d).astype(x.dtype)).reshape(b, t, d)
  h = rms_norm(x, p.ffn_norm, eps).reshape(b * t, d)
  gate_up = (h @ p.w13.reshape(d, -1).astype(x.dtype)).reshape(b * t, 2, -1)
  hidden = jax.nn.silu(gate_up[:, 0]) * gate_up[:, 1]
  hidden = constrain(hidden.reshape(b, t, -1), ("batch", "length", "act_mlp"))
  return constrain(x + hidden @ p.w2.astype(x.dtype), ("batch", "length", "act_embed"))


def block_forward(p: LayerParams, x: jax.Array, angles: jax.Array, visible: jax.Array,
                  eps: float) -> jax.Array:
  """One block over a whole sequence: x (B, T, D), visible (B, T, T)."""
  q, k, v = block_qkv(p, x, angles, eps)
  return block_finish(p, x, attend(q, k, v, visible), eps)


def cross_entropy(logits: list[jax.Array], codes: jax.Array, sub_code_bits
                  ) -> tuple[jax.Array, dict]:
  """Mean over positions of -log p(code) = sum of the sub-code cross-entropies (nats).
  Returns (loss, {'ce_k': ..., 'acc_k': ..., 'acc': whole-code accuracy})."""
  subs = split_codes(codes, sub_code_bits)
  total, metrics, all_right = 0.0, {}, True
  for k, (lg, s) in enumerate(zip(logits, subs)):
    logp = jax.nn.log_softmax(lg, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, s[..., None], axis=-1))
    right = jnp.argmax(lg, axis=-1) == s
    metrics[f"ce_{k}"], metrics[f"acc_{k}"] = ce, jnp.mean(right)
    all_right = all_right & right
    total = total + ce
  metrics["acc"] = jnp.mean(all_right)
  return total, metrics
