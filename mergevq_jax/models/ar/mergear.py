"""MergeAR: LlamaGen-style decoder-only transformer over raster code sequences.

Input sequence: [class token, merge-instruction token M_K, c_0, ..., c_{L-2}]; the output
at M_K predicts c_0 and the output at c_i predicts c_{i+1}. Pre-norm blocks with RMSNorm,
multi-head attention with 2D RoPE over the code grid (prefix tokens are not rotated),
SwiGLU FFN, no biases. Layers are stacked along a leading 'layers' axis and run with
`lax.scan` (optionally rematerialised).

The 2^18 vocabulary is factorised into sub-codes (most significant bits first, see
`blocks.split_codes`): the input embedding is the sum of one embedding per sub-code, and the
output is one head per sub-code predicted in order, head k seeing the final hidden state
plus embeddings of the sub-codes before it. p(c) = prod_k p(s_k | s_<k, context).

Shapes: codes (B, L) int32 in [0, 2^bits); class ids (B,) int32, the null class (for
classifier-free guidance) is `num_classes`; keep index (B,) int32 into `keep_values`.
The attention mask over code positions comes from `merge_mask`; the cached decoder in
`decode` computes with the same block functions (`blocks`). The module reads
`config.model` and `config.dtype`; the config schema is `mergevq_jax.config.mergear`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mergevq_jax.models.ar import hparams
from mergevq_jax.models.ar.blocks import LayerParams, block_forward, rms_norm, rope_angles, split_codes
# Checks and geometry are pure Python, shared with the PyTorch port; re-exported here.
from mergevq_jax.models.ar.hparams import (ATTENTION_KINDS, PREFIX, check_hparams,  # noqa: F401
                                           num_positions)
from mergevq_jax.models.ar.merge_mask import sequence_mask
from mergevq_jax.models.layers import compute_dtype
from mergevq_jax.sharding import axes

def _param(value, *names):
  return nnx.Param(value, **axes(*names))


class MergeAR(nnx.Module):

  def __init__(self, config, *, rngs: nnx.Rngs):
    check_hparams(config)
    config = ml_collections.FrozenConfigDict(config)
    self.config = config
    m = config.model
    self.dtype = compute_dtype(config.dtype)
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
    return num_positions(self.config.model)

  @property
  def keep_values(self) -> tuple[int, ...]:
    return tuple(int(k) for k in self.config.model.keep_values)

  def keep_index(self, num_keep) -> int:
    """Index of merge instruction K; ValueError if the model was not trained with it."""
    return hparams.keep_index(self.keep_values, num_keep)

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
