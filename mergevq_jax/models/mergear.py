"""MergeAR: LlamaGen-style decoder-only transformer over raster code sequences.

Input sequence: [class token, merge-instruction token M_K, c_0, ..., c_{L-2}]; the output
at M_K predicts c_0 and the output at c_i predicts c_{i+1}. Pre-norm blocks with RMSNorm,
multi-head attention with 2D RoPE over the code grid (prefix tokens are not rotated),
SwiGLU FFN, no biases. Layers are stacked along a leading 'layers' axis and run with
`lax.scan` (optionally rematerialised).

The 2^18 vocabulary is factorised into sub-codes (most significant bits first, see
`split_codes`): the input embedding is the sum of one embedding per sub-code, and the
output is one head per sub-code predicted in order, head k seeing the final hidden state
plus embeddings of the sub-codes before it. p(c) = prod_k p(s_k | s_<k, context).

Shapes: codes (B, L) int32 in [0, 2^bits); class ids (B,) int32, the null class (for
classifier-free guidance) is `num_classes`; keep index (B,) int32 into `keep_values`.
The attention mask over code positions comes from `merge_mask`; the cached decoder in
`mergear_decode` computes with the same block functions.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mergevq_jax import config_mergear
from mergevq_jax.models.merge_mask import sequence_mask
from mergevq_jax.sharding import axes, constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PREFIX = 2  # class token, merge-instruction token


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


def _param(value, *names):
  return nnx.Param(value, **axes(*names))


class MergeAR(nnx.Module):

  def __init__(self, config, *, rngs: nnx.Rngs):
    config_mergear.validate_mergear_config(config)
    config = ml_collections.FrozenConfigDict(config)
    self.config = config
    m = config.model
    self.dtype = DTYPES[config.dtype]
    D, H, F, n = m.width, m.num_heads, m.ffn_dim, m.num_layers
    Dh = D // H
    init = jax.nn.initializers.normal(m.init_std)
    key = rngs.params
    self.class_embed = _param(init(key(), (m.num_classes + 1, D)), "vocab", "embed")
    self.keep_embed = _param(init(key(), (len(m.keep_values), D)), None, "embed")
    self.code_embed = nnx.List([_param(init(key(), (2 ** b, D)), "vocab", "embed")
                                for b in m.sub_code_bits])
    # Head k >= 1 sees the final hidden state + embeddings of sub-codes 0..k-1.
    self.head_cond_embed = nnx.List([_param(init(key(), (2 ** b, D)), "vocab", "embed")
                                     for b in m.sub_code_bits[:-1]])
    self.layers = nnx.Dict(
        attn_norm=_param(jnp.ones((n, D)), "layers", "norm"),
        wqkv=_param(init(key(), (n, D, 3, H, Dh)), "layers", "embed", None, "heads",
                    "head_dim"),
        wo=_param(init(key(), (n, H, Dh, D)), "layers", "heads", "head_dim", "embed"),
        ffn_norm=_param(jnp.ones((n, D)), "layers", "norm"),
        w13=_param(init(key(), (n, D, 2, F)), "layers", "embed", None, "mlp"),
        w2=_param(init(key(), (n, F, D)), "layers", "mlp", "embed"))
    self.final_norm = _param(jnp.ones((D,)), "norm")
    # LlamaGen zero-initialises the output layer: training starts from uniform logits.
    self.heads = nnx.List([_param(jnp.zeros((D, 2 ** b)), "embed", "vocab")
                           for b in m.sub_code_bits])

  # ------------------------------------------------------------------ geometry
  @property
  def num_positions(self) -> int:
    return config_mergear.num_positions(self.config.model)

  @property
  def keep_values(self) -> tuple[int, ...]:
    return tuple(int(k) for k in self.config.model.keep_values)

  def keep_index(self, num_keep) -> int:
    """Index of merge instruction K; ValueError if the model was not trained with it."""
    if int(num_keep) not in self.keep_values:
      raise ValueError(f"K={num_keep} is not a merge instruction this model knows "
                       f"(model.keep_values={self.keep_values})")
    return self.keep_values.index(int(num_keep))

  def layer_params(self) -> LayerParams:
    return LayerParams(**{k: v[...] for k, v in self.layers.items()})

  def code_angles(self) -> jax.Array:
    m = self.config.model
    return rope_angles(tuple(m.grid), m.width // m.num_heads, m.rope_base)

  def input_angles(self, num_codes: int) -> jax.Array:
    """(1, P + num_codes, Dh/2): zero angles (no rotation) for the prefix."""
    ang = self.code_angles()[:num_codes]
    return jnp.concatenate([jnp.zeros((PREFIX, ang.shape[-1])), ang])[None]

  # ------------------------------------------------------------------ pieces
  def embed_codes(self, codes: jax.Array) -> jax.Array:
    """(B, T) codes -> (B, T, D): sum of the sub-code embeddings."""
    subs = split_codes(codes, self.config.model.sub_code_bits)
    return sum(table[...][s] for table, s in zip(self.code_embed, subs)).astype(self.dtype)

  def embed_prefix(self, class_ids: jax.Array, keep_index: jax.Array) -> jax.Array:
    """(B,) class ids, (B,) keep indices -> (B, 2, D)."""
    x = jnp.stack([self.class_embed[...][class_ids], self.keep_embed[...][keep_index]], axis=1)
    return x.astype(self.dtype)

  def run_layers(self, x: jax.Array, angles: jax.Array, visible: jax.Array) -> jax.Array:
    """All blocks over a whole sequence, then the final norm: (B, T, D) -> (B, T, D)."""
    eps = self.config.model.norm_eps

    def body(h, p):
      return block_forward(p, h, angles, visible, eps), None

    if self.config.model.remat:
      body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, self.layer_params())
    return self.final(x)

  def final(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.final_norm[...], self.config.model.norm_eps)

  def head_logits(self, h: jax.Array, k: int, previous: list[jax.Array]) -> jax.Array:
    """Logits of sub-code k, float32 (..., 2^bits_k); `previous` are sub-codes 0..k-1."""
    for table, s in zip(self.head_cond_embed, previous):
      h = h + table[...][s].astype(h.dtype)
    return jnp.einsum("...d,dv->...v", h, self.heads[k][...].astype(h.dtype),
                      preferred_element_type=jnp.float32)

  def teacher_logits(self, h: jax.Array, codes: jax.Array) -> list[jax.Array]:
    """Per-head logits with each head conditioned on the true earlier sub-codes."""
    subs = split_codes(codes, self.config.model.sub_code_bits)
    return [self.head_logits(h, k, subs[:k]) for k in range(len(subs))]

  # ------------------------------------------------------------------ training forward
  def __call__(self, codes: jax.Array, class_ids: jax.Array, keep_index: jax.Array,
               code_mask: jax.Array) -> list[jax.Array]:
    """Teacher-forced logits for every code position.

    codes (B, L); code_mask (B, L, L) bool over code positions (`merge_mask` or
    `causal_mask`). Returns one (B, L, 2^bits_k) float32 array per sub-code.
    """
    L = codes.shape[1]
    x = jnp.concatenate([self.embed_prefix(class_ids, keep_index),
                         self.embed_codes(codes[:, :-1])], axis=1)
    visible = sequence_mask(code_mask[:, :L - 1, :L - 1], PREFIX)
    h = self.run_layers(x, self.input_angles(L - 1), visible)
    return self.teacher_logits(h[:, PREFIX - 1:], codes)


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
