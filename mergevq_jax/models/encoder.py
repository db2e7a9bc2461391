"""MergeVQ encoder: CNN (G, G+R) or patch-embedding (R) stem, 12 ToMe transformer blocks.

images (B, H, W, 3) -> L = (H/f)(W/f) patch tokens (+ [CLS]) -> merged to K tokens ->
GroupNorm -> SiLU -> 1x1 projection to the LFQ dimension (18).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mergevq_jax.models import layers, tome
from mergevq_jax.sharding import axes


class EncoderOutput(NamedTuple):
  z: jax.Array        # (B, K, z_channels) pre-quantisation latents of the kept tokens
  cls: jax.Array      # (B, width) [CLS] token after the transformer
  owner: jax.Array    # (B, L) int32 source index: which kept token owns each position
  size: jax.Array     # (B, K) float, original positions per kept token
  anchor: jax.Array   # (B, K) int32, original position of each kept token's own patch


class CNNStem(nnx.Module):
  """conv3x3 (no bias) -> per level ResBlocks -> stride-2 conv3x3 between levels."""

  def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, *,
               rngs: nnx.Rngs, dtype=jnp.float32, in_channels: int = 3,
               platform: str | None = None):
    self.conv_in = layers.conv(in_channels, ch, 3, use_bias=False, dtype=dtype, rngs=rngs,
                               platform=platform)
    blocks, downs = [], []
    cin = ch
    for level, mult in enumerate(ch_mult):
      cout = ch * mult
      level_blocks = []
      for _ in range(num_res_blocks):
        level_blocks.append(layers.ResBlock(cin, cout, dtype=dtype, rngs=rngs,
                                            platform=platform))
        cin = cout
      blocks.append(nnx.List(level_blocks))
      if level < len(ch_mult) - 1:
        downs.append(layers.conv(cout, cout, 3, stride=2, dtype=dtype, rngs=rngs,
                                 platform=platform))
    self.blocks = nnx.List(blocks)
    self.downsample = nnx.List(downs)
    self.out_channels = cin

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for level, level_blocks in enumerate(self.blocks):
      for block in level_blocks:
        x = block(x)
      if level < len(self.downsample):
        x = layers.constrain_map(self.downsample[level](x))
    return x


class PatchStem(nnx.Module):
  """R variant: conv patch x patch stride patch to the width, then GroupNorm(width groups)."""

  def __init__(self, patch: int, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               in_channels: int = 3, platform: str | None = None):
    self.proj = layers.conv(in_channels, width, patch, stride=patch, padding="VALID",
                            dtype=dtype, rngs=rngs, platform=platform)
    self.norm = layers.GroupNorm(width, num_groups=width, dtype=dtype, rngs=rngs)
    self.out_channels = width

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.proj(x))


class Encoder(nnx.Module):
  """Stem + [CLS] + ToMe transformer + output projection (+ alignment head).
  cfg: the model config; platform: the config's, selects the ops (`mergevq_jax.ops`)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, platform: str | None = None):
    if cfg.encoder_type == "cnn":
      self.stem = CNNStem(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, dtype=dtype, rngs=rngs,
                          platform=platform)
    elif cfg.encoder_type == "vit":
      self.stem = PatchStem(cfg.patch_size, cfg.width, dtype=dtype, rngs=rngs,
                            platform=platform)
    else:
      raise ValueError(f"model.encoder_type must be 'cnn' or 'vit', got {cfg.encoder_type!r}")
    width = self.stem.out_channels
    self.width = width
    self.cls_token = nnx.Param(
        nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, width)), **axes(None, None, "embed"))
    self.blocks = nnx.List([
        layers.TransformerBlock(width, cfg.num_heads, init_values=cfg.init_values, dtype=dtype,
                                attention_impl=cfg.attention_impl or None, rngs=rngs)
        for _ in range(cfg.num_layers)])
    self.norm_out = layers.group_norm(width, dtype=dtype, rngs=rngs)
    self.conv_out = layers.linear(width, cfg.z_channels, ("embed", None), dtype=dtype, rngs=rngs,
                                  init=layers.TORCH_DEFAULT)
    self.prop_attn = cfg.proportional_attention

  def __call__(self, images: jax.Array, schedule: Sequence[int]) -> EncoderOutput:
    """images: (B, H, W, 3); schedule: static per-block merge counts (len = num layers)."""
    x, state = self.transformer(images, schedule)
    tokens = x[:, 1:]
    z = self.conv_out(jax.nn.silu(self.norm_out(tokens)))
    return EncoderOutput(z=z, cls=x[:, 0], owner=state.owner, size=state.size[:, 1:],
                         anchor=state.anchor)

  def transformer(self, images: jax.Array, schedule: Sequence[int]
                  ) -> tuple[jax.Array, tome.MergeState]:
    """The transformer's output tokens (B, 1 + K, width), [CLS] first, and merge state."""
    feats = self.stem(images)
    b, h, w, c = feats.shape
    x = feats.reshape(b, h * w, c)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, c))
    x = layers.constrain_tokens(jnp.concatenate([cls, x], axis=1))
    state = tome.init_merge_state(b, h * w)
    for block, r in zip(self.blocks, schedule, strict=True):
      bias = tome.attention_bias(state.size) if self.prop_attn else None
      x, metric = block.attention_residual(x, bias)
      x, state = tome.merge_step(x, metric, state, r)
      x = block.mlp_residual(x)
    return x, state
