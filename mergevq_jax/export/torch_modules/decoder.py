"""MergeVQ decoder in PyTorch (twin of `mergevq_jax.models.decoder`): conv in -> transformer
blocks (depthwise-conv position term, MixFFN) -> per level AdaptiveGroupNorm + ResBlocks +
depth-to-space upsampling -> conv out.

z (B, z_channels, h, w) quantised latents on the full token grid (after S^T Z_K) ->
images (B, 3, h f, w f).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mergevq_jax.export.torch_modules import layers


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
  """(B, b*b*C, H, W) -> (B, C, H b, W b); channel (i*b + j)*C + c goes to pixel (i, j) of
  each block (DCR order, as the JAX model; torch's pixel_shuffle is CRD, not this)."""
  b, c, h, w = x.shape
  c_out = c // (block * block)
  x = x.reshape(b, block, block, c_out, h, w)
  x = x.permute(0, 3, 4, 1, 5, 2)            # (B, C, H, i, W, j)
  return x.reshape(b, c_out, h * block, w * block)


class AdaptiveGroupNorm(nn.Module):
  """GroupNorm without affine, then scale = gamma(std of z), shift = beta(mean of z), with
  statistics of the quantised latents z over spatial positions (unbiased variance)."""

  def __init__(self, z_channels: int, channels: int):
    super().__init__()
    self.norm = layers.group_norm(channels, affine=False)
    self.gamma = layers.Linear(z_channels, channels, init="torch_default")
    self.beta = layers.Linear(z_channels, channels, init="torch_default")

  def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W), z (B, z_channels, h, w) -> (B, C, H, W)."""
    std = torch.sqrt(torch.var(z, dim=(2, 3), correction=1) + 1e-6)
    mean = torch.mean(z, dim=(2, 3))
    scale = self.gamma(std)[:, :, None, None]
    shift = self.beta(mean)[:, :, None, None]
    return self.norm(x) * scale + shift


class Decoder(nn.Module):
  """`cfg` is the model config dict."""

  def __init__(self, cfg: dict):
    super().__init__()
    ch, ch_mult = cfg["ch"], tuple(cfg["ch_mult"])
    z_channels = cfg["z_channels"]
    width = ch * ch_mult[-1]
    self.conv_in = layers.Conv(z_channels, width, 3)
    self.pos_conv = layers.DepthwiseConv(width)
    self.blocks = nn.ModuleList([
        layers.TransformerBlock(width, cfg["decoder_num_heads"], init_values=cfg["init_values"],
                                mix_mlp=True)
        for _ in range(cfg["num_layers"])])
    # Levels from the coarsest (width channels) to the finest (ch channels).
    adaptive, levels, upsample = [], [], []
    cin = width
    for level in reversed(range(len(ch_mult))):
      cout = ch * ch_mult[level]
      n_blocks = cfg["num_res_blocks"] + (cfg["num_res_extra"] if level > 0 else 0)
      adaptive.append(AdaptiveGroupNorm(z_channels, cin))
      blocks = []
      for _ in range(n_blocks):
        blocks.append(layers.ResBlock(cin, cout))
        cin = cout
      levels.append(nn.ModuleList(blocks))
      if level > 0:
        upsample.append(layers.Conv(cin, 4 * cin, 3))
    self.adaptive = nn.ModuleList(adaptive)
    self.levels = nn.ModuleList(levels)
    self.upsample = nn.ModuleList(upsample)
    self.norm_out = layers.group_norm(cin)
    self.conv_out = layers.Conv(cin, 3, 3)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    """z (B, z_channels, h, w) -> images (B, 3, H, W), roughly in [-1, 1]."""
    x = self.conv_in(z)
    b, c, h, w = x.shape
    x = x + self.pos_conv(x)
    x = x.flatten(2).transpose(1, 2)          # (B, h w, C)
    for block in self.blocks:
      x = block(x, grid=(h, w))
    x = x.transpose(1, 2).reshape(b, c, h, w)
    for i, (norm, blocks) in enumerate(zip(self.adaptive, self.levels)):
      x = norm(x, z)
      for block in blocks:
        x = block(x)
      if i < len(self.upsample):
        x = depth_to_space(self.upsample[i](x), 2)
    return self.conv_out(F.silu(self.norm_out(x)))
