"""Source Recovery: predict the source matrix S from the K quantised tokens alone.

L learnable queries cross-attend to the K tokens (embedded to width 384), then run
self-attention layers over the L queries; logits[b, k, l] = head(token_k) . head(query_l).
S_hat^T = argmax over K per position l. Trained with element-wise BCE against S.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mergevq_jax.models import layers
from mergevq_jax.sharding import axes


class CrossBlock(nnx.Module):
  """q + ls1(cross_attn(ln1 q, kv)); q + ls2(mlp(ln2 q))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.norm1 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.attn = layers.Attention(dim, num_heads, cross=True, dtype=dtype, rngs=rngs)
    self.ls1 = layers.LayerScale(dim, 1e-5)
    self.norm2 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.ls2 = layers.LayerScale(dim, 1e-5)

  def __call__(self, q: jax.Array, kv: jax.Array) -> jax.Array:
    q = q + self.ls1(self.attn(self.norm1(q), context=kv)[0])
    return q + self.ls2(self.mlp(self.norm2(q)))


class SourceRecoveryOutput(NamedTuple):
  logits: jax.Array   # (B, K, L) assignment logits of position l to kept token k
  owner: jax.Array    # (B, L) int32 predicted source index (argmax over K)


class SourceRecovery(nnx.Module):

  def __init__(self, cfg, z_channels: int, num_tokens: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    """cfg: the model.recovery config (width, num_heads, mlp_dim, num_*_layers)."""
    dim = cfg.width
    self.embed = layers.linear(z_channels, dim, (None, "embed"), dtype=dtype, rngs=rngs)
    self.norm_in = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.queries = nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, num_tokens, dim)),
                             **axes(None, "length", "embed"))
    self.cross = nnx.List([CrossBlock(dim, cfg.num_heads, cfg.mlp_dim, dtype=dtype, rngs=rngs)
                           for _ in range(cfg.num_cross_layers)])
    self.self_attn = nnx.List([
        layers.TransformerBlock(dim, cfg.num_heads, mlp_ratio=cfg.mlp_dim / dim, dtype=dtype,
                                rngs=rngs)
        for _ in range(cfg.num_self_layers)])
    self.head = layers.linear(dim, dim, ("embed", None), dtype=dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> SourceRecoveryOutput:
    """tokens: (B, K, z_channels) quantised kept tokens."""
    kv = self.norm_in(self.embed(tokens))
    q = jnp.broadcast_to(self.queries[...].astype(kv.dtype), (tokens.shape[0],) + self.queries.shape[1:])
    for block in self.cross:
      q = block(q, kv)
    for block in self.self_attn:
      q = block(q)
    logits = jnp.einsum("bkd,bld->bkl", self.head(kv), self.head(q)).astype(jnp.float32)
    return SourceRecoveryOutput(logits=logits, owner=jnp.argmax(logits, axis=1).astype(jnp.int32))
