"""MergeVQ decoder: conv in -> 12 transformer blocks (depthwise-conv position term, MixFFN)
-> per level AdaptiveGroupNorm + ResBlocks + depth-to-space upsampling -> conv out.

z (B, h, w, z_channels) quantised latents on the full token grid (after S^T Z_K) ->
images (B, h f, w f, 3).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mergevq_jax.models import layers


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
  """(B, H, W, b*b*C) -> (B, H b, W b, C); channel index (i*b + j)*C + c goes to pixel
  (i, j) of each block (PyTorch's DCR order of the reference code)."""
  b, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(b, h, w, block, block, c_out)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * block, w * block, c_out)


class AdaptiveGroupNorm(nnx.Module):
  """GroupNorm without affine, then scale = gamma(std of z), shift = beta(mean of z),
  with statistics of the quantised latents z over spatial positions."""

  def __init__(self, z_channels: int, channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.norm = layers.group_norm(channels, affine=False, dtype=dtype, rngs=rngs)
    self.gamma = layers.linear(z_channels, channels, (None, "conv_out"), dtype=dtype, rngs=rngs,
                               init=layers.TORCH_DEFAULT)
    self.beta = layers.linear(z_channels, channels, (None, "conv_out"), dtype=dtype, rngs=rngs,
                              init=layers.TORCH_DEFAULT)

  def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
    zf = z.astype(jnp.float32)
    std = jnp.sqrt(jnp.var(zf, axis=(1, 2), ddof=1) + 1e-6)  # unbiased, as torch.var
    mean = jnp.mean(zf, axis=(1, 2))
    scale = self.gamma(std.astype(x.dtype))[:, None, None, :]
    shift = self.beta(mean.astype(x.dtype))[:, None, None, :]
    return self.norm(x) * scale + shift


class Decoder(nnx.Module):
  """cfg: the model config; platform: the config's, selects the ops (`mergevq_jax.ops`)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, platform: str | None = None):
    ch, ch_mult = cfg.ch, tuple(cfg.ch_mult)
    width = ch * ch_mult[-1]
    conv = lambda cin, cout: layers.conv(cin, cout, 3, dtype=dtype, rngs=rngs, platform=platform)
    self.conv_in = conv(cfg.z_channels, width)
    self.pos_conv = layers.DepthwiseConv(width, dtype=dtype, rngs=rngs, platform=platform)
    self.blocks = nnx.List([
        layers.TransformerBlock(width, cfg.decoder_num_heads, init_values=cfg.init_values,
                                mix_mlp=True, dtype=dtype, rngs=rngs,
                                attention_impl=cfg.attention_impl or None, platform=platform)
        for _ in range(cfg.num_layers)])
    # Levels from the coarsest (width channels) to the finest (ch channels).
    adaptive, levels, upsample = [], [], []
    cin = width
    for level in reversed(range(len(ch_mult))):
      cout = ch * ch_mult[level]
      n_blocks = cfg.num_res_blocks + (cfg.num_res_extra if level > 0 else 0)
      adaptive.append(AdaptiveGroupNorm(cfg.z_channels, cin, dtype=dtype, rngs=rngs))
      blocks = []
      for _ in range(n_blocks):
        blocks.append(layers.ResBlock(cin, cout, dtype=dtype, rngs=rngs, platform=platform))
        cin = cout
      levels.append(nnx.List(blocks))
      if level > 0:
        upsample.append(conv(cin, 4 * cin))
    self.adaptive = nnx.List(adaptive)
    self.levels = nnx.List(levels)
    self.upsample = nnx.List(upsample)
    self.norm_out = layers.group_norm(cin, dtype=dtype, rngs=rngs)
    self.conv_out = conv(cin, 3)

  def __call__(self, z: jax.Array) -> jax.Array:
    """z: (B, h, w, z_channels) -> images (B, H, W, 3), roughly in [-1, 1]."""
    x = self.conv_in(z)
    b, h, w, c = x.shape
    x = x + self.pos_conv(x)
    x = layers.constrain_tokens(x.reshape(b, h * w, c))
    for block in self.blocks:
      x = block(x, grid=(h, w))
    x = layers.constrain_map(x.reshape(b, h, w, c))
    for i, (norm, blocks) in enumerate(zip(self.adaptive, self.levels)):
      x = norm(x, z)
      for block in blocks:
        x = block(x)
      if i < len(self.upsample):
        x = layers.constrain_map(depth_to_space(self.upsample[i](x), 2))
    return self.conv_out(jax.nn.silu(self.norm_out(x)))
