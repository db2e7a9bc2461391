"""MergeVQ encoder in PyTorch (twin of `mergevq_jax.models.encoder`): CNN (G, G+R) or
patch-embedding (R) stem, ToMe transformer blocks, GroupNorm -> SiLU -> projection to the
LFQ dimension.

images (B, 3, H, W) -> L = (H/f)(W/f) patch tokens + [CLS] -> merged to K tokens -> z.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mergevq_jax.export.torch_modules import layers, tome


class EncoderOutput(NamedTuple):
  z: torch.Tensor      # (B, K, z_channels) pre-quantisation latents of the kept tokens
  cls: torch.Tensor    # (B, width) [CLS] token after the transformer
  owner: torch.Tensor  # (B, L) int64: which kept token owns each original position
  size: torch.Tensor   # (B, K) float32 original positions per kept token


class CNNStem(nn.Module):
  """conv3x3 (no bias) -> per level ResBlocks -> stride-2 conv3x3 between levels."""

  def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
               in_channels: int = 3):
    super().__init__()
    self.conv_in = layers.Conv(in_channels, ch, 3, use_bias=False)
    blocks, downs = [], []
    cin = ch
    for level, mult in enumerate(ch_mult):
      cout = ch * mult
      level_blocks = []
      for _ in range(num_res_blocks):
        level_blocks.append(layers.ResBlock(cin, cout))
        cin = cout
      blocks.append(nn.ModuleList(level_blocks))
      if level < len(ch_mult) - 1:
        downs.append(layers.Conv(cout, cout, 3, stride=2))
    self.blocks = nn.ModuleList(blocks)
    self.downsample = nn.ModuleList(downs)
    self.out_channels = cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, H/f, W/f)."""
    x = self.conv_in(x)
    for level, level_blocks in enumerate(self.blocks):
      for block in level_blocks:
        x = block(x)
      if level < len(self.downsample):
        x = self.downsample[level](x)
    return x


class PatchStem(nn.Module):
  """R variant: conv patch x patch, stride patch, to the width; GroupNorm(width groups)."""

  def __init__(self, patch: int, width: int, in_channels: int = 3):
    super().__init__()
    self.proj = layers.Conv(in_channels, width, patch, stride=patch, padding="VALID")
    self.norm = layers.GroupNorm(width, num_groups=width)
    self.out_channels = width

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, width, H/patch, W/patch)."""
    return self.norm(self.proj(x))


class Encoder(nn.Module):
  """Stem + [CLS] + ToMe transformer + output projection; `cfg` is the model config dict."""

  def __init__(self, cfg: dict):
    super().__init__()
    if cfg["encoder_type"] == "cnn":
      self.stem = CNNStem(cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"])
    elif cfg["encoder_type"] == "vit":
      self.stem = PatchStem(cfg["patch_size"], cfg["width"])
    else:
      raise ValueError(f"model.encoder_type must be 'cnn' or 'vit', got {cfg['encoder_type']!r}")
    width = self.stem.out_channels
    self.width = width
    self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 1e-6)
    self.blocks = nn.ModuleList([
        layers.TransformerBlock(width, cfg["num_heads"], init_values=cfg["init_values"])
        for _ in range(cfg["num_layers"])])
    self.norm_out = layers.group_norm(width)
    self.conv_out = layers.Linear(width, cfg["z_channels"], init="torch_default")
    self.prop_attn = bool(cfg["proportional_attention"])

  def forward(self, images: torch.Tensor, schedule: Sequence[int]) -> EncoderOutput:
    """images (B, 3, H, W); schedule: per-block merge counts (one per block)."""
    if len(schedule) != len(self.blocks):
      raise ValueError(f"the merge schedule has {len(schedule)} entries for "
                       f"{len(self.blocks)} blocks")
    feats = self.stem(images)
    b, c = feats.shape[:2]
    x = feats.flatten(2).transpose(1, 2)    # (B, h w, C), row-major positions as NHWC
    state = tome.init_merge_state(b, x.shape[1], device=x.device)
    x = torch.cat([self.cls_token.expand(b, 1, c), x], dim=1)
    for block, r in zip(self.blocks, schedule):
      bias = tome.attention_bias(state.size) if self.prop_attn else None
      x, metric = block.attention_residual(x, bias)
      x, state = tome.merge_step(x, metric, state, int(r))
      x = block.mlp_residual(x)
    tokens = x[:, 1:]
    # GroupNorm statistics over the K tokens and each group's channels.
    normed = self.norm_out(tokens.transpose(1, 2)).transpose(1, 2)
    z = self.conv_out(F.silu(normed))
    return EncoderOutput(z=z, cls=x[:, 0], owner=state.owner, size=state.size[:, 1:])
