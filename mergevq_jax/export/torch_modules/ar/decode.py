"""MergeAR decoding in PyTorch (mirror of `mergevq_jax/models/ar/decode.py`): a loop over
the L raster positions with the fixed-shape KV cache of `kv_cache` (prefix + K_cap kept
slots + a ring of W, or the full causal cache), one token per row per step.

`teacher_forced_logits` feeds given codes (equal to the full forward under `merge_mask`);
`generate` samples them, with classifier-free guidance as conditional and null-class rows
of one batch. Both share `prefill` and `feed_code`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import kv_cache
from .blocks import attend, block_finish, block_qkv, join_codes
from .kv_cache import CacheLayout, CacheState
from .mergear import PREFIX, MergeAR
from .sampling import SamplingParams, guide, sample

__all__ = ["DecodeStats", "SamplingParams", "check_request", "prefill", "feed_code",
           "teacher_forced_logits", "generate"]


class DecodeStats(NamedTuple):
  kept_slots_used: torch.Tensor   # (B,) int64 (the full cache: L)
  overflow: torch.Tensor          # (B,) int64 new codes that found the kept region full


def _layers(model: MergeAR):
  """Per-layer LayerParams, sliced once per decode."""
  stacked = model.layer_params()
  return [stacked.layer(i) for i in range(model.num_layers)]


def _step(model: MergeAR, layers, layout: CacheLayout, cache: CacheState, x: torch.Tensor,
          angles: torch.Tensor, slots: torch.Tensor, position: int) -> torch.Tensor:
  """Feed one token per row: x (R, 1, D) at raster `position` into `slots` (R,); angles
  (1, 1, Dh/2). Returns the final-normed hidden state (R, D); the cache is updated."""
  kv_cache.record_position(cache, slots, position)
  visible = kv_cache.visible_slots(layout, cache, position)[:, None, :]   # (R, 1, C)
  for i, p in enumerate(layers):
    q, k, v = block_qkv(p, x, angles, model.eps)
    kv_cache.write_kv(cache, i, slots, k[:, :, 0], v[:, :, 0])
    x = block_finish(p, x, attend(q, cache.k[i], cache.v[i], visible), model.eps)
  return model.final(x)[:, 0]


def prefill(model: MergeAR, layers, layout: CacheLayout, class_ids: torch.Tensor,
            keep_index: torch.Tensor) -> tuple[torch.Tensor, CacheState]:
  """Run the prefix [class, M_K] into a fresh cache; returns the hidden state at M_K
  (which predicts the first code), (R, D), and the cache."""
  rows = class_ids.shape[0]
  dev = model.device
  cache = kv_cache.init_cache(layout, rows, model.num_layers, model.num_heads, model.head_dim,
                              dev)
  x = model.embed_prefix(class_ids, keep_index)
  no_rotation = torch.zeros((1, 1, model.head_dim // 2), device=dev)
  h = None
  for t in range(PREFIX):
    slots = torch.full((rows,), t, dtype=torch.long, device=dev)
    h = _step(model, layers, layout, cache, x[:, t:t + 1], no_rotation, slots, t - PREFIX)
  return h, cache


def feed_code(model: MergeAR, layers, layout: CacheLayout, cache: CacheState,
              codes: torch.Tensor, position: int) -> torch.Tensor:
  """Feed codes (R,) at raster `position`; returns the hidden state (R, D)."""
  slots = kv_cache.assign_slot(layout, cache, codes, position)
  angles = model.code_angles()[position:position + 1][None]
  return _step(model, layers, layout, cache, model.embed_codes(codes[:, None]), angles, slots,
               position)


def _stats(layout: CacheLayout, cache: CacheState, last_codes: torch.Tensor, rows: int
           ) -> DecodeStats:
  """Account the last code (never fed: it predicts nothing) in the slot bookkeeping."""
  kv_cache.assign_slot(layout, cache, last_codes, layout.length - 1)
  return DecodeStats(cache.num_kept[:rows].clone(), cache.overflow[:rows].clone())


@torch.no_grad()
def teacher_forced_logits(model: MergeAR, layout: CacheLayout, codes: torch.Tensor,
                          class_ids: torch.Tensor, keep_index: torch.Tensor
                          ) -> tuple[list[torch.Tensor], DecodeStats]:
  """Logits for every position from the cached decoder fed `codes` (B, L): one
  (B, L, 2^bits_k) tensor per sub-code, as `MergeAR.forward` returns them."""
  layers = _layers(model)
  h, cache = prefill(model, layers, layout, class_ids, keep_index)
  hs = [h]
  for i in range(codes.shape[1] - 1):
    hs.append(feed_code(model, layers, layout, cache, codes[:, i], i))
  return (model.teacher_logits(torch.stack(hs, dim=1), codes),
          _stats(layout, cache, codes[:, -1], codes.shape[0]))


def _pick_code(model: MergeAR, h: torch.Tensor, params: SamplingParams, guidance: bool,
               generator: torch.Generator | None) -> torch.Tensor:
  """Sample one code per sample from hidden states h (R, D): sub-code heads in order,
  each guided and filtered on its own vocabulary. Returns (B,) codes, B = R / 2 with
  guidance."""
  subs, row_subs = [], []
  for k in range(len(model.heads)):
    logits = model.head_logits(h, k, row_subs)
    if guidance:
      logits = guide(logits, params.cfg_scale)
    s = sample(logits, params, generator)
    subs.append(s)
    row_subs.append(torch.cat([s, s]) if guidance else s)
  return join_codes(subs, model.sub_code_bits)


@torch.no_grad()
def generate(model: MergeAR, layout: CacheLayout, class_ids: torch.Tensor,
             keep_index: torch.Tensor, params: SamplingParams, guidance: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, DecodeStats]:
  """Sample (B, L) int64 codes for class ids (B,) and merge-instruction indices (B,).
  With guidance, null-class rows run in the same batch (2B rows)."""
  batch = class_ids.shape[0]
  if guidance:
    class_ids = torch.cat([class_ids, torch.full_like(class_ids, model.num_classes)])
    keep_index = torch.cat([keep_index, keep_index])
  rows = (lambda c: torch.cat([c, c])) if guidance else (lambda c: c)
  layers = _layers(model)
  h, cache = prefill(model, layers, layout, class_ids, keep_index)
  codes = []
  for i in range(layout.length - 1):
    code = _pick_code(model, h, params, guidance, generator)
    codes.append(code)
    h = feed_code(model, layers, layout, cache, rows(code), i)
  last = _pick_code(model, h, params, guidance, generator)
  codes.append(last)
  return torch.stack(codes, dim=1), _stats(layout, cache, rows(last), batch)


def check_request(model: MergeAR, class_ids, num_keep: int, keep_cap: int | None
                  ) -> tuple[torch.Tensor, int]:
  """Validated (class ids (B,) int64 on the model's device, K_cap); ValueError otherwise.
  keep_cap None or 0 means K."""
  ids = torch.as_tensor(class_ids)
  if ids.ndim != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype.is_complex \
      or ids.dtype == torch.bool:
    raise ValueError(f"class_ids must be a non-empty 1-D integer array, got {class_ids!r}")
  if int(ids.min()) < 0 or int(ids.max()) >= model.num_classes:
    raise ValueError(f"class ids must be in [0, {model.num_classes}), got "
                     f"{sorted(set(ids.tolist()))}")
  model.keep_index(num_keep)
  keep_cap = int(num_keep if not keep_cap else keep_cap)
  if keep_cap < num_keep:
    raise ValueError(f"K_cap={keep_cap} is smaller than the merge instruction K={num_keep}")
  return ids.long().to(model.device), keep_cap
