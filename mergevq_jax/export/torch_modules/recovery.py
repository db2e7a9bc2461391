"""Source Recovery in PyTorch (twin of `mergevq_jax.models.recovery`): predict the source
matrix S from the K quantised tokens alone.

L learnable queries cross-attend to the K embedded tokens, then run self-attention layers;
logits[b, k, l] = head(token_k) . head(query_l); the predicted owner of position l is the
argmax over K.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mergevq_jax.export.torch_modules import layers


class CrossBlock(nn.Module):
  """q + ls1(cross_attn(ln1 q, kv)); q + ls2(mlp(ln2 q))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = layers.LayerNorm(dim)
    self.attn = layers.Attention(dim, num_heads, cross=True)
    self.ls1 = layers.LayerScale(dim, 1e-5)
    self.norm2 = layers.LayerNorm(dim)
    self.mlp = layers.Mlp(dim, mlp_dim)
    self.ls2 = layers.LayerScale(dim, 1e-5)

  def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """q (B, L, D) queries, kv (B, K, D) -> (B, L, D)."""
    q = q + self.ls1(self.attn(self.norm1(q), context=kv)[0])
    return q + self.ls2(self.mlp(self.norm2(q)))


class SourceRecoveryOutput(NamedTuple):
  logits: torch.Tensor  # (B, K, L) float32 assignment logits of position l to kept token k
  owner: torch.Tensor   # (B, L) int64 predicted source index (argmax over K)


class SourceRecovery(nn.Module):

  def __init__(self, cfg: dict, z_channels: int, num_tokens: int):
    """cfg: the model.recovery config dict (width, num_heads, mlp_dim, num_*_layers)."""
    super().__init__()
    dim = cfg["width"]
    self.embed = layers.Linear(z_channels, dim)
    self.norm_in = layers.LayerNorm(dim)
    self.queries = nn.Parameter(torch.randn(1, num_tokens, dim) * 1e-6)
    self.cross = nn.ModuleList([CrossBlock(dim, cfg["num_heads"], cfg["mlp_dim"])
                                for _ in range(cfg["num_cross_layers"])])
    # mlp_ratio written as the JAX model does, so that the hidden width int(dim * ratio)
    # rounds the same way.
    self.self_attn = nn.ModuleList([
        layers.TransformerBlock(dim, cfg["num_heads"], mlp_ratio=cfg["mlp_dim"] / dim)
        for _ in range(cfg["num_self_layers"])])
    self.head = layers.Linear(dim, dim)

  def forward(self, tokens: torch.Tensor) -> SourceRecoveryOutput:
    """tokens (B, K, z_channels) quantised kept tokens."""
    kv = self.norm_in(self.embed(tokens))
    q = self.queries.expand(tokens.shape[0], -1, -1)
    for block in self.cross:
      q = block(q, kv)
    for block in self.self_attn:
      q = block(q)
    logits = torch.einsum("bkd,bld->bkl", self.head(kv), self.head(q))
    return SourceRecoveryOutput(logits=logits, owner=logits.argmax(dim=1))
