"""Transcription of the authors' MergeVQ tokenizer for inference, in PyTorch, for the export
tests (tests/test_export_authors.py). It is not part of the package and imports nothing of
it: written from github ApexGen-X/MergeVQ (Apache-2.0) at commit
52671985f5b9f9338469538950ed747a694f88ea,

  taming/modules/diffusionmodules/tome/merge.py   bipartite_soft_matching, merge_wavg,
                                                  merge_source, parse_r, check_parse_r
  taming/modules/diffusionmodules/tome/timm.py    Attention, ToMeAttention, Block,
                                                  ToMeBlock, make_tome_class, apply_patch
  taming/modules/diffusionmodules/model_mergevq.py  ResBlock, MixMlp, TransformerBlock,
                                                  MergeVQEncoder, MergeVQDecoder,
                                                  SourceRecovery (learn_source=False),
                                                  token_unmerge, depth_to_space, Upsampler,
                                                  AdaptiveGroupNorm, generate_prob_list
  taming/modules/vqvae/lookup_free_quantize.py    LFQ (the eval path)
  taming/models/lfqgan_rep.py                     MergeVQModel: __init__ modules, encode,
                                                  decode, forward(x)

with their module and attribute names, so that state_dict() keys are theirs, and their
order of operations. Left out (not needed for inference, or not loadable offline): the
Lightning module's training / loss / optimiser / EMA / teacher parts, weight
initialisation (every weight is loaded), DINOv2 weight selection (model_path must be
None), flash-attn, and the learned SourceRecovery (learn_source=True; its weights are
never exported). Packages we lack are replaced by the few functions used: timm's Mlp,
LayerScale, DropPath and use_fused_attn; einops' rearrange / pack / reduce as torch ops.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ============================================================================ timm pieces


def use_fused_attn() -> bool:
  """timm.layers.use_fused_attn: True with PyTorch 2 (F.scaled_dot_product_attention)."""
  return hasattr(F, "scaled_dot_product_attention")


class Mlp(nn.Module):
  """timm.layers.Mlp (norm_layer None, bias True, use_conv False)."""

  def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU,
               drop=0., **kwargs):
    super().__init__()
    out_features = out_features or in_features
    hidden_features = hidden_features or in_features
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = act_layer()
    self.drop1 = nn.Dropout(drop)
    self.norm = nn.Identity()
    self.fc2 = nn.Linear(hidden_features, out_features)
    self.drop2 = nn.Dropout(drop)

  def forward(self, x):
    x = self.fc1(x)
    x = self.act(x)
    x = self.drop1(x)
    x = self.norm(x)
    x = self.fc2(x)
    x = self.drop2(x)
    return x


class LayerScale(nn.Module):
  """timm.models.vision_transformer.LayerScale."""

  def __init__(self, dim, init_values=1e-5, inplace=False):
    super().__init__()
    self.inplace = inplace
    self.gamma = nn.Parameter(init_values * torch.ones(dim))

  def forward(self, x):
    return x.mul_(self.gamma) if self.inplace else x * self.gamma


class DropPath(nn.Module):
  """timm.layers.DropPath (identity in eval)."""

  def __init__(self, drop_prob=0., scale_by_keep=True):
    super().__init__()
    self.drop_prob = drop_prob
    self.scale_by_keep = scale_by_keep

  def forward(self, x):
    if self.drop_prob == 0. or not self.training:
      return x
    keep = 1 - self.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0 and self.scale_by_keep:
      mask.div_(keep)
    return x * mask


# ============================================================================ tome/merge.py


def do_nothing(x, mode=None):
  return x


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = False,
                            distill_token: bool = False) -> Tuple[Callable, Callable]:
  protected = 0
  if class_token:
    protected += 1
  if distill_token:
    protected += 1

  # at most 50% of the tokens per call
  t = metric.shape[1]
  r = min(r, (t - protected) // 2)

  if r <= 0:
    return do_nothing, do_nothing

  with torch.no_grad():
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)

    if class_token:
      scores[..., 0, :] = -math.inf
    if distill_token:
      scores[..., :, 0] = -math.inf

    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]

    unm_idx = edge_idx[..., r:, :]  # unmerged
    src_idx = edge_idx[..., :r, :]  # merged
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    if class_token:
      unm_idx = unm_idx.sort(dim=1)[0]  # class token first

  def merge(x: torch.Tensor, mode="mean") -> torch.Tensor:
    src, dst = x[..., ::2, :], x[..., 1::2, :]
    n, t1, c = src.shape
    unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
    src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
    dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
    if distill_token:
      return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
    return torch.cat([unm, dst], dim=1)

  return merge, None   # (their unmerge closure is never used by MergeVQ; left out)


def merge_wavg(merge: Callable, x: torch.Tensor, size: torch.Tensor = None):
  if size is None:
    size = torch.ones_like(x[..., 0, None])
  x = merge(x * size, mode="sum")
  size = merge(size, mode="sum")
  x = x / size
  return x, size


def merge_source(merge: Callable, x: torch.Tensor, source: torch.Tensor = None) -> torch.Tensor:
  if source is None:
    n, t, _ = x.shape
    source = torch.eye(t, device=x.device)[None, ...].expand(n, t, t)
  source = merge(source, mode="amax")
  return source


def parse_r(num_layers: int, r: Union[List[int], Tuple[int, float], int],
            total: int = None) -> List[int]:
  inflect = 0
  if isinstance(r, list):
    if len(r) < num_layers:
      r = r + [0] * (num_layers - len(r))
    return list(r)
  elif isinstance(r, tuple):
    r, inflect = r

  min_val = int(r * (1.0 - inflect))
  max_val = 2 * r - min_val
  step = (max_val - min_val) / (num_layers - 1)
  r_list = [int(min_val + step * i) for i in range(num_layers)]

  if total is not None:
    remainder = total - sum(r_list)
    if remainder != 0:
      if inflect < 0:
        r_list[0] += remainder
      else:
        r_list[-1] += remainder
  return r_list


def check_parse_r(num_layers: int, merge_num: int, total_num: int, r_inflect: float = 0.,
                  sqrt: bool = False):
  gap = 1e10
  best_r = 0
  for i in range(merge_num):
    r_list = parse_r(num_layers, (i, r_inflect))
    gap_ = sum(r_list) - merge_num
    if gap > abs(gap_):
      keep_num = total_num - sum(r_list)
      if sqrt and int(keep_num ** 0.5) ** 2 != keep_num:
        continue
      best_r = i
      gap = abs(gap_)
    else:
      if gap < abs(gap_):
        break
  return best_r


# ============================================================================ tome/timm.py


class Attention(nn.Module):
  """Their timm-derived attention (flash-attn branch left out: not installed here, as on
  their CPU path)."""

  def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
               qk_norm: bool = False, attn_drop: float = 0., proj_drop: float = 0.,
               norm_layer: nn.Module = nn.LayerNorm, fused_attn: bool = True,
               use_flash_attn: bool = True, window_size=None) -> None:
    super().__init__()
    assert dim % num_heads == 0, 'dim should be divisible by num_heads'
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim ** -0.5
    self.fused_attn = fused_attn and use_fused_attn()
    self.window_size = window_size
    self.use_flash_attn = False

    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
    self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
    self.attn_drop = nn.Dropout(attn_drop)
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(proj_drop)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    if self.fused_attn:
      x = F.scaled_dot_product_attention(q, k, v,
                                         dropout_p=self.attn_drop.p if self.training else 0.)
    else:
      q = q * self.scale
      attn = q @ k.transpose(-2, -1)
      attn = attn.softmax(dim=-1)
      attn = self.attn_drop(attn)
      x = attn @ v
    x = x.transpose(1, 2).reshape(B, N, C)
    x = self.proj(x)
    x = self.proj_drop(x)
    return x


class ToMeAttention(Attention):
  """Proportional attention; returns the keys averaged over heads as the ToMe metric."""

  def forward(self, x: torch.Tensor, size: torch.Tensor = None):
    B, N, C = x.shape
    qkv = (self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
           .permute(2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]
    if self.fused_attn:
      x = F.scaled_dot_product_attention(
          q, k, v, attn_mask=None if size is None else size.log()[:, None, None, :, 0],
          dropout_p=self.attn_drop.p if self.training else 0.)
    else:
      attn = (q @ k.transpose(-2, -1)) * self.scale
      if size is not None:
        attn = attn + size.log()[:, None, None, :, 0]
      attn = attn.softmax(dim=-1)
      attn = self.attn_drop(attn)
      x = attn @ v
    x = x.transpose(1, 2).reshape(B, N, C)
    x = self.proj(x)
    x = self.proj_drop(x)
    return x, k.mean(1)


class Block(nn.Module):

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = False,
               qk_norm: bool = False, proj_drop: float = 0., attn_drop: float = 0.,
               init_values: Optional[float] = None, drop_path: float = 0.,
               act_layer: nn.Module = nn.GELU, norm_layer: nn.Module = nn.LayerNorm,
               mlp_layer: nn.Module = Mlp, use_flash_attn: bool = False) -> None:
    super().__init__()
    self.norm1 = norm_layer(dim)
    self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                          attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer,
                          use_flash_attn=use_flash_attn)
    self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
    self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
    self.norm2 = norm_layer(dim)
    self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio),
                         act_layer=act_layer, drop=proj_drop)
    self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
    self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
    x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return x


class ToMeBlock(Block):
  """ToMe between the attention and the MLP; propagates token sizes and sources."""

  def _drop_path1(self, x):
    return self.drop_path1(x) if hasattr(self, "drop_path1") else self.drop_path(x)

  def _drop_path2(self, x):
    return self.drop_path2(x) if hasattr(self, "drop_path2") else self.drop_path(x)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    attn_size = self._tome_info["size"] if self._tome_info["prop_attn"] else None
    x_attn, metric = self.attn(self.norm1(x), attn_size)
    x = x + self._drop_path1(self.ls1(x_attn))

    r = self._tome_info["r"].pop(0)
    if r > 0:
      merge, _ = bipartite_soft_matching(metric, r, self._tome_info["class_token"],
                                         self._tome_info["distill_token"])
      if self._tome_info["trace_source"]:
        self._tome_info["source"] = merge_source(merge, x, self._tome_info["source"])
      x, self._tome_info["size"] = merge_wavg(merge, x, self._tome_info["size"])

    x = x + self._drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return x


def make_tome_class(transformer_class):
  class ToMeVisionTransformer(transformer_class):

    def forward(self, *args, **kwdargs) -> torch.Tensor:
      self._tome_info["r"] = parse_r(len(self.blocks), self.r, self._tome_info["total_merge"])
      self._tome_info["size"] = None
      self._tome_info["source"] = None
      return super().forward(*args, **kwdargs)

  return ToMeVisionTransformer


def apply_patch(model, trace_source: bool = True, prop_attn: bool = True):
  ToMeVisionTransformer = make_tome_class(model.__class__)
  model.__class__ = ToMeVisionTransformer
  model.r = 0
  model._tome_info = {
      "r": model.r,
      "size": None,
      "source": None,
      "total_merge": None,
      "trace_source": trace_source,
      "prop_attn": prop_attn,
      "class_token": model.cls_token is not None,
      "distill_token": False,
  }
  if hasattr(model, "dist_token") and model.dist_token is not None:
    model._tome_info["distill_token"] = True
  for module in model.modules():
    if isinstance(module, Block):
      module.__class__ = ToMeBlock
      module._tome_info = model._tome_info
    elif isinstance(module, Attention):
      module.__class__ = ToMeAttention


# ============================================================================ model_mergevq


class ResBlock(nn.Module):

  def __init__(self, in_filters, out_filters, use_conv_shortcut=False, use_agn=False) -> None:
    super().__init__()
    self.in_filters = in_filters
    self.out_filters = out_filters
    self.use_conv_shortcut = use_conv_shortcut
    self.use_agn = use_agn
    if not use_agn:
      self.norm1 = nn.GroupNorm(32, in_filters, eps=1e-6)
    self.norm2 = nn.GroupNorm(32, out_filters, eps=1e-6)
    self.act = nn.SiLU()
    self.conv1 = nn.Conv2d(in_filters, out_filters, kernel_size=(3, 3), padding=1, bias=False)
    self.conv2 = nn.Conv2d(out_filters, out_filters, kernel_size=(3, 3), padding=1, bias=False)
    if in_filters != out_filters:
      if self.use_conv_shortcut:
        self.conv_shortcut = nn.Conv2d(in_filters, out_filters, kernel_size=(3, 3), padding=1,
                                       bias=False)
      else:
        self.nin_shortcut = nn.Conv2d(in_filters, out_filters, kernel_size=(1, 1), padding=0,
                                      bias=False)

  def forward(self, x, **kwargs):
    residual = x
    if not self.use_agn:
      x = self.norm1(x)
    x = self.act(x)
    x = self.conv1(x)
    x = self.norm2(x)
    x = self.act(x)
    x = self.conv2(x)
    if self.in_filters != self.out_filters:
      if self.use_conv_shortcut:
        residual = self.conv_shortcut(residual)
      else:
        residual = self.nin_shortcut(residual)
    return x + residual


class MixMlp(nn.Module):

  def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU,
               drop=0., **kwargs):
    super().__init__()
    out_features = out_features or in_features
    hidden_features = hidden_features or in_features
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.dwconv = nn.Conv2d(hidden_features, hidden_features, (3, 3), 1, 1, bias=True,
                            groups=hidden_features)
    self.act = act_layer()
    self.fc2 = nn.Linear(hidden_features, out_features)
    self.drop = nn.Dropout(drop)

  def forward(self, x):
    x = self.fc1(x)
    B, N, C = x.shape
    sz = int(N ** 0.5)
    x = x.transpose(1, 2).view(B, C, sz, sz)
    x = self.dwconv(x)
    x = x.flatten(2).transpose(1, 2)
    x = self.act(x)
    x = self.drop(x)
    x = self.fc2(x)
    x = self.drop(x)
    return x


class TransformerBlock(nn.Module):

  def __init__(self, *, embed_dim=768, num_layers=12, num_heads=12, drop_path=0.0,
               with_cls_token=True, with_dw_conv=False, init_values=1e-5,
               use_flash_attn=False, **kwargs):
    super(TransformerBlock, self).__init__()
    self.embed_dim = embed_dim
    self.num_layers = num_layers
    self.num_heads = num_heads
    self.with_cls_token = with_cls_token
    self.with_dw_conv = with_dw_conv
    if self.with_cls_token:
      self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
    if self.with_dw_conv:
      self.pos_embed = nn.Conv2d(self.embed_dim, self.embed_dim, (3, 3), padding=1,
                                 groups=self.embed_dim)
    self.pos_drop = nn.Dropout(p=0.0)
    dp_rates = [x.item() for x in torch.linspace(drop_path, 0.0, num_layers)]
    self.blocks = nn.Sequential(*[
        Block(dim=self.embed_dim, num_heads=self.num_heads, mlp_ratio=4.0, qkv_bias=True,
              init_values=init_values, drop_path=dp_rates[j], norm_layer=nn.LayerNorm,
              act_layer=nn.GELU, mlp_layer=Mlp if not with_dw_conv else MixMlp,
              use_flash_attn=use_flash_attn)
        for j in range(num_layers)])

  def forward(self, x):
    B, N, C = x.shape
    if self.with_cls_token:
      cls_tokens = self.cls_token.expand(B, -1, -1)
      x = torch.cat((cls_tokens, x), dim=1)
    if self.with_dw_conv:
      sz = int(N ** 0.5)
      x = x.transpose(1, 2).view(B, C, sz, sz)
      x = x + self.pos_embed(x)
      x = x.flatten(2).transpose(1, 2)
    x = self.pos_drop(x)
    x = self.blocks(x)
    return x


def generate_prob_list(r_cand_list, distribution='gaussian', **kwargs):
  n = len(r_cand_list)
  r_cand_list = np.arange(n)
  if distribution.lower() == 'gaussian':
    mean = kwargs.get('mean', 0)
    std = kwargs.get('std', 1)
    r_prob = np.exp(-((np.array(r_cand_list) - mean) ** 2) / (2 * std ** 2))
    r_prob += 0.05
  elif distribution.lower() == 'exponential':
    lambd = kwargs.get('lambd', 1)
    r_prob = lambd * np.exp(-lambd * np.array(r_cand_list))
    r_prob += 0.1
  else:
    r_prob = np.ones(n) / n
  r_prob /= np.sum(r_prob)
  return np.around(np.cumsum(r_prob), decimals=5)


class MergeVQEncoder(nn.Module):

  def __init__(self, *, ch, out_ch, in_channels, ch_mult=(1, 2, 4, 8), resolution=256,
               z_channels=18, num_res_blocks=2, num_att_blocks=12, num_heads=8, head_dim=None,
               drop_path=0, merge_ratio=None, merge_num=None, dist_head=None, num_classes=None,
               model_path=None, num_rep_blocks=0, cand_distribution=None, isotropic=False,
               use_flash_attn=False, **ignore_kwargs):
    super().__init__()
    self.in_channels = in_channels
    self.z_channels = z_channels
    self.resolution = resolution
    self.dist_head = dist_head
    self.isotropic = isotropic

    self.num_blocks = len(ch_mult)
    self.num_res_blocks = num_res_blocks
    self.num_att_blocks = num_att_blocks
    if isinstance(self.num_res_blocks, list):
      assert len(self.num_res_blocks) == self.num_blocks
    elif isinstance(self.num_res_blocks, int):
      self.num_res_blocks = [num_res_blocks for i in range(self.num_blocks)]

    if not self.isotropic:
      self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=(3, 3), padding=1, bias=False)

    self.down = nn.ModuleList()
    curr_res = resolution
    in_ch_mult = (1,) + tuple(ch_mult)
    for i_level in range(self.num_blocks):
      block = nn.ModuleList()
      block_dim = int(ch * in_ch_mult[i_level])
      block_out = int(ch * ch_mult[i_level])
      for j in range(self.num_res_blocks[i_level]):
        block.append(ResBlock(block_dim, block_out))
        block_dim = block_out
      down = nn.Module()
      if not self.isotropic:
        down.block = block
      if i_level < self.num_blocks - 1:
        down.downsample = nn.Conv2d(block_out, block_out, kernel_size=(3, 3), stride=(2, 2),
                                    padding=1)
        curr_res = curr_res // 2
      if not self.isotropic:
        self.down.append(down)
    if self.isotropic:
      patch_size = resolution // curr_res
      block_dim = (int(self.isotropic) if isinstance(self.isotropic, int) and self.isotropic > 1
                   else block_dim)
      self.conv_in = nn.Sequential(
          nn.Conv2d(in_channels, block_dim, kernel_size=(patch_size, patch_size),
                    stride=patch_size, padding=0),
          nn.GroupNorm(block_dim, block_dim, eps=1e-6),
      )

    self.embed_dim = block_dim
    self.num_heads = num_heads if head_dim is None else max(self.embed_dim // head_dim, num_heads)
    self.merge_num = merge_num
    self.embed_res = curr_res
    self.embed_len, self.merge_res = None, None
    assert self.embed_dim % self.num_heads == 0, 'dim should be divisible by num_heads'
    self.attn = TransformerBlock(embed_dim=self.embed_dim, num_layers=self.num_att_blocks,
                                 num_heads=self.num_heads, with_cls_token=True,
                                 drop_path=drop_path, use_flash_attn=use_flash_attn)
    self.attn = self.apply_merge(self.attn, merge_ratio=(merge_ratio, -0.5),
                                 merge_num=merge_num, cand_distribution=cand_distribution)

    self.norm_out = nn.GroupNorm(32, self.embed_dim, eps=1e-6)
    self.act_out = nn.SiLU()
    self.conv_out = nn.Conv2d(self.embed_dim, z_channels, kernel_size=(1, 1))

    if self.dist_head:
      hidden_dim = int(4 * self.embed_dim)
      num_classes = self.embed_dim if not num_classes else num_classes
      self.num_rep_blocks = num_rep_blocks
      self.rep_attn = TransformerBlock(
          embed_dim=self.embed_dim, num_layers=num_rep_blocks, num_heads=self.num_heads,
          with_cls_token=False, use_flash_attn=use_flash_attn) if num_rep_blocks > 0 else None
      if self.dist_head == 'layer3':
        self.dist_head = nn.Sequential(
            nn.Linear(self.embed_dim, hidden_dim, bias=True),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim, bias=True),
            nn.GELU(),
            nn.Linear(hidden_dim, num_classes, bias=True),
        )
      else:
        self.dist_head = nn.Sequential(
            nn.Linear(self.embed_dim, hidden_dim, bias=True),
            nn.GELU(),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, num_classes, bias=True),
        )
    if model_path is not None:
      raise NotImplementedError("DINOv2 weight selection (model_path) is not transcribed")

  def forward(self, x, return_head=False):
    x = self.conv_in(x)
    if not self.isotropic:
      for i_level in range(self.num_blocks):
        for i_block in range(self.num_res_blocks[i_level]):
          x = self.down[i_level].block[i_block](x)
        if i_level < self.num_blocks - 1:
          x = self.down[i_level].downsample(x)

    B, C, H, W = x.shape
    x = x.view(B, C, -1).permute(0, 2, 1)
    x = self.attn(x)

    if self.dist_head and return_head:
      if self.rep_attn is not None:
        x = self.rep_attn(x)
      cls_token = x[:, 0, :]
      cls_token = self.dist_head(cls_token)
      return cls_token

    x = x[:, 1:, :].permute(0, 2, 1).reshape(B, C, self.merge_res, self.merge_res)
    x = self.norm_out(x)
    x = self.act_out(x)
    x = self.conv_out(x)
    return x

  def apply_merge(self, model, merge_ratio=None, merge_num=None, cand_distribution="gaussian-5"):
    apply_patch(model)
    inflect, num_layers = -0.5, self.num_att_blocks
    if isinstance(merge_ratio, tuple):
      merge_ratio, inflect = merge_ratio
    if merge_ratio is not None and merge_num is None:
      self.merge_num = sum(parse_r(num_layers, r=(merge_ratio, inflect)))
    elif merge_ratio is None and merge_num is not None or cand_distribution is not None:
      merge_ratio = check_parse_r(num_layers, merge_num, self.embed_res ** 2, inflect)
      if isinstance(cand_distribution, str):
        cand_distribution = cand_distribution.split('-')
        if len(cand_distribution) == 2:
          cand_distribution, r_cand_num = cand_distribution[0], int(cand_distribution[-1])
        else:
          cand_distribution, r_cand_num = cand_distribution[0], 5
      if cand_distribution is not None:
        bias = 1 if cand_distribution.lower() == "gaussian" else 0
        remain_list = [int(((self.embed_res ** 2 - merge_num) ** 0.5 + i) ** 2)
                       for i in range(int(-bias), r_cand_num - bias)]
        r_prob_list = generate_prob_list(remain_list, distribution=cand_distribution,
                                         mean=bias, std=0.5, lambd=2.0)
        r_cand_list = [check_parse_r(num_layers, int(self.embed_res ** 2 - num),
                                     self.embed_res ** 2, inflect) for num in remain_list]
        model._tome_info["remain_list"] = remain_list
        model._tome_info["r_cand_list"] = r_cand_list
        model._tome_info["r_prob_list"] = r_prob_list
    else:
      self.merge_num, self.merge_ratio = merge_num, merge_ratio
    self.embed_len = int(self.embed_res ** 2)
    self.merge_res = int((self.embed_len - self.merge_num) ** 0.5)

    model.r = (merge_ratio, inflect)
    model._tome_info["r"] = model.r
    model._tome_info["total_merge"] = merge_num
    return model

  def sampling_r_candidate(self, rand=None):
    if self.attn._tome_info.get("r_cand_list", None) is None:
      return rand
    if rand is None:
      rand = np.random.random()
    index = bisect_left(self.attn._tome_info["r_prob_list"], rand)
    r = self.attn._tome_info["r_cand_list"][index]
    if self.attn.r[0] != r:
      self.attn.r = (r, -0.5)
      self.attn._tome_info["total_merge"] = int(
          self.embed_len - self.attn._tome_info["remain_list"][index])
      self.merge_res = int(self.attn._tome_info["remain_list"][index] ** 0.5)
    return (r, -0.5)


class MergeVQDecoder(nn.Module):

  def __init__(self, *, ch, out_ch, in_channels, ch_mult=(1, 2, 2, 4), resolution=256,
               z_channels=18, num_res_blocks=2, num_att_blocks=12, num_res_extra=1, num_heads=8,
               head_dim=None, drop_path=0, merge_ratio=None, use_flash_attn=False,
               **ignore_kwargs):
    super().__init__()
    self.ch = ch
    self.num_blocks = len(ch_mult)
    self.num_res_blocks = num_res_blocks
    self.num_att_blocks = num_att_blocks
    self.num_res_extra = num_res_extra
    self.resolution = resolution
    self.in_channels = in_channels
    if isinstance(num_res_blocks, list):
      assert len(self.num_res_blocks) == self.num_blocks
    elif isinstance(num_res_blocks, int):
      self.num_res_blocks = [num_res_blocks + num_res_extra for i in range(self.num_blocks)]
      self.num_res_blocks[0] = self.num_res_blocks[0] - self.num_res_extra

    block_in = int(ch * ch_mult[self.num_blocks - 1])
    self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=(3, 3), padding=1, bias=True)

    self.embed_dim = block_in
    self.num_heads = num_heads if head_dim is None else max(self.embed_dim // head_dim, num_heads)
    assert self.embed_dim % self.num_heads == 0, 'dim should be divisible by num_heads'
    self.attn = TransformerBlock(
        embed_dim=self.embed_dim, num_layers=self.num_att_blocks, num_heads=self.num_heads,
        with_cls_token=False, with_dw_conv=True, drop_path=0.0, use_flash_attn=use_flash_attn)

    self.up = nn.ModuleList()
    self.adaptive = nn.ModuleList()
    for i_level in reversed(range(self.num_blocks)):
      block = nn.ModuleList()
      block_out = int(ch * ch_mult[i_level])
      self.adaptive.insert(0, AdaptiveGroupNorm(z_channels, block_in))
      for i_block in range(self.num_res_blocks[i_level]):
        block.append(ResBlock(block_in, block_out))
        block_in = block_out
      up = nn.Module()
      up.block = block
      if i_level > 0:
        up.upsample = Upsampler(block_in)
      self.up.insert(0, up)

    self.norm_out = nn.GroupNorm(32, block_in, eps=1e-6)
    self.act_out = nn.SiLU()
    self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=(3, 3), padding=1)

  def forward(self, z):
    style = z.clone()
    z = self.conv_in(z)
    B, C, H, W = z.shape
    z = z.view(B, C, -1).permute(0, 2, 1)
    z = self.attn(z)
    z = z.permute(0, 2, 1).reshape(B, C, H, W)
    for i_level in reversed(range(self.num_blocks)):
      z = self.adaptive[i_level](z, style)
      for i_block in range(self.num_res_blocks[i_level]):
        z = self.up[i_level].block[i_block](z)
      if i_level > 0:
        z = self.up[i_level].upsample(z)
    z = self.norm_out(z)
    z = self.act_out(z)
    z = self.conv_out(z)
    return z


class SourceRecovery(nn.Module):
  """learn_source=False only (no parameters): S^T Z with the given source."""

  def __init__(self, *, keep_num=None, full_num=256, embed_dim=18, rec_embed_dim=384,
               num_layers=2, num_heads=8, learn_source=None, **ignore_kwargs):
    super().__init__()
    if learn_source:
      raise NotImplementedError("the learned SourceRecovery is not transcribed")
    self.keep_num = keep_num
    self.full_num = full_num
    self.learn_source = learn_source

  def forward(self, x, source=None):
    return token_unmerge(x, source)


def token_unmerge(keep_tokens, source=None):
  if source is None:
    return keep_tokens
  B, _, C = keep_tokens.shape
  full_L = source.shape[-1]
  full_tokens = torch.zeros(B, full_L, C).to(keep_tokens)
  indices = (source == 1).nonzero(as_tuple=False)
  batch_idx = indices[:, 0]
  full_tokens[batch_idx, indices[:, 2], :] = keep_tokens[batch_idx, indices[:, 1], :]
  return full_tokens


def depth_to_space(x: torch.Tensor, block_size: int) -> torch.Tensor:
  """DCR depth-to-space on a channels-first tensor."""
  if x.dim() < 3:
    raise ValueError("Expecting a channels-first (*CHW) tensor of at least 3 dimensions")
  c, h, w = x.shape[-3:]
  s = block_size ** 2
  if c % s != 0:
    raise ValueError(f"Expecting C divisible by {s}, but got C={c} channels")
  outer_dims = x.shape[:-3]
  x = x.view(-1, block_size, block_size, c // s, h, w)
  x = x.permute(0, 3, 4, 1, 5, 2)
  x = x.contiguous().view(*outer_dims, c // s, h * block_size, w * block_size)
  return x


class Upsampler(nn.Module):

  def __init__(self, dim, dim_out=None):
    super().__init__()
    dim_out = dim * 4 if dim_out is None else dim_out
    self.conv1 = nn.Conv2d(dim, dim_out, (3, 3), padding=1)
    self.depth2space = depth_to_space

  def forward(self, x):
    out = self.conv1(x)
    out = self.depth2space(out, block_size=2)
    return out


class AdaptiveGroupNorm(nn.Module):

  def __init__(self, z_channel, in_filters, num_groups=32, eps=1e-6):
    super().__init__()
    self.gn = nn.GroupNorm(num_groups=32, num_channels=in_filters, eps=eps, affine=False)
    self.gamma = nn.Linear(z_channel, in_filters)
    self.beta = nn.Linear(z_channel, in_filters)
    self.eps = eps

  def forward(self, x, quantizer):
    B, C, _, _ = x.shape
    # einops rearrange "b c h w -> b c (h w)"
    scale = quantizer.flatten(2)
    scale = scale.var(dim=-1) + self.eps   # torch.var: unbiased (their comment says not)
    scale = scale.sqrt()
    scale = self.gamma(scale).view(B, C, 1, 1)
    bias = quantizer.flatten(2)
    bias = bias.mean(dim=-1)
    bias = self.beta(bias).view(B, C, 1, 1)
    x = self.gn(x)
    x = scale * x + bias
    return x


# ============================================================================ lookup_free_quantize


class LFQ(nn.Module):
  """Their LFQ, eval path (no entropy / commitment loss); buffers are non-persistent, so
  it adds no state_dict keys."""

  def __init__(self, *, dim=None, codebook_size=None, num_codebooks=1,
               sample_minimization_weight=1.0, batch_maximization_weight=1.0,
               token_factorization=False, factorized_bits=(9, 9)):
    super().__init__()
    assert dim is not None or codebook_size is not None
    assert codebook_size is None or math.log2(codebook_size).is_integer()
    self.codebook_size = codebook_size if codebook_size is not None else 2 ** dim
    self.codebook_dim = int(math.log2(self.codebook_size))
    codebook_dims = self.codebook_dim * num_codebooks
    dim = dim if dim is not None else codebook_dims
    self.has_projections = dim != codebook_dims
    self.dim = dim
    self.num_codebooks = num_codebooks
    self.sample_minimization_weight = sample_minimization_weight
    self.batch_maximization_weight = batch_maximization_weight
    self.token_factorization = token_factorization
    if not self.token_factorization:
      self.register_buffer('mask', 2 ** torch.arange(self.codebook_dim), persistent=False)
    else:
      self.factorized_bits = factorized_bits
      self.register_buffer("pre_mask", 2 ** torch.arange(factorized_bits[0]), persistent=False)
      self.register_buffer("post_mask", 2 ** torch.arange(factorized_bits[1]), persistent=False)
    self.register_buffer('zero', torch.tensor(0.), persistent=False)
    all_codes = torch.arange(self.codebook_size)
    bits = self.indices_to_bits(all_codes)
    codebook = bits * 2.0 - 1.0
    self.register_buffer('codebook', codebook, persistent=False)

  def indices_to_bits(self, x):
    mask = 2 ** torch.arange(self.codebook_dim, device=x.device, dtype=torch.long)
    return (x.unsqueeze(-1) & mask) != 0

  def forward(self, x, inv_temperature=100., return_loss_breakdown=False, mask=None,
              return_loss=True):
    assert not self.training, "only the eval path is transcribed"
    # einops: rearrange 'b d ... -> b ... d'; pack_one 'b * d'
    x = x.movedim(1, -1)
    ps = x.shape[1:-1]
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    # rearrange 'b n (c d) -> b n c d'
    x = x.reshape(x.shape[0], x.shape[1], self.num_codebooks, -1)

    codebook_value = torch.Tensor([1.0]).to(device=x.device, dtype=x.dtype)
    quantized = torch.where(x > 0, codebook_value, -codebook_value)

    if self.token_factorization:
      nb = self.factorized_bits[0]
      indices_pre = ((quantized[..., :nb] > 0).int() * self.pre_mask.int()).sum(-1)
      indices_post = ((quantized[..., nb:] > 0).int() * self.post_mask.int()).sum(-1)
    else:
      indices = ((quantized > 0).int() * self.mask.int()).sum(-1)   # reduce 'b n c d -> b n c'

    per_sample_entropy = codebook_entropy = self.zero
    entropy_aux_loss = self.zero
    avg_probs = self.zero
    commit_loss = self.zero

    quantized = x + (quantized - x).detach()
    quantized = quantized.reshape(quantized.shape[0], quantized.shape[1], -1)  # 'b n (c d)'
    quantized = quantized.reshape(quantized.shape[0], *ps, quantized.shape[-1])  # unpack
    quantized = quantized.movedim(-1, 1)                                        # 'b d ...'

    if self.token_factorization:
      indices = (indices_pre.flatten(), indices_post.flatten())
    else:
      indices = indices.flatten()

    ret = (quantized, entropy_aux_loss, indices)
    if not return_loss_breakdown:
      return ret
    return ret, (per_sample_entropy, codebook_entropy, commit_loss, avg_probs)


# ============================================================================ lfqgan_rep


class MergeVQModel(nn.Module):
  """The inference part of their Lightning MergeVQModel; takes their YAML init_args (the
  training-only ones are accepted and ignored)."""

  def __init__(self, ddconfig, lossconfig=None, k2lconfig=None, n_embed=262144, embed_dim=18,
               sample_minimization_weight=1.0, batch_maximization_weight=1.0,
               token_factorization=False, factorized_bits=(9, 9), **training_only):
    super().__init__()
    assert k2lconfig is not None, "k2lconfig None builds their plain LFQ-GAN, not MergeVQ"
    self.encoder = MergeVQEncoder(**ddconfig)
    self.decoder = MergeVQDecoder(**ddconfig)
    self.recovery = SourceRecovery(**k2lconfig)
    self.quantize = LFQ(dim=embed_dim, codebook_size=n_embed,
                        sample_minimization_weight=sample_minimization_weight,
                        batch_maximization_weight=batch_maximization_weight,
                        token_factorization=token_factorization,
                        factorized_bits=factorized_bits)

  def encode(self, x):
    h = self.encoder(x)
    (quant, emb_loss, info), loss_breakdown = self.quantize(h, return_loss_breakdown=True)
    return quant, emb_loss, info, loss_breakdown

  def decode(self, quant):
    if getattr(self.encoder.attn, "_tome_info", None) is None:
      return self.decoder(quant)
    source = self.encoder.attn._tome_info['source']
    if self.encoder.attn._tome_info['class_token'] and source is not None:
      source = source[:, 1:, 1:]
    quant = torch.flatten(quant, start_dim=2)
    quant = quant.permute(0, 2, 1)
    if self.recovery is not None:
      rec_tokens = self.recovery(quant, source)
    else:
      rec_tokens = token_unmerge(quant, source)
    rec_tokens = rec_tokens.permute(0, 2, 1)
    B, D, L = rec_tokens.shape
    rec_tokens = rec_tokens.reshape(B, D, int(L ** 0.5), -1)
    return self.decoder(rec_tokens)

  def forward(self, x):
    quant, diff, _, loss_break = self.encode(x)
    dec = self.decode(quant)
    return dec, diff, loss_break
