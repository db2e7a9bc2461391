"""MergeAR's fixed-shape KV cache in PyTorch (mirror of `mergevq_jax/models/ar/kv_cache.py`;
spec section 6): prefix + kept region + ring of W.

Slots: [0, P) the prefix; [P, P + K_cap) the kept region, filled in order; [P + K_cap,
P + K_cap + W) a ring where window position j lives in slot j mod W. A kept-code buffer
(K_cap codes) decides where the code at position j goes: a code not yet kept while the
region has room is kept; anything else goes to the ring (an unseen code that finds the
region full is counted as overflow). A position buffer records each slot's raster
position (prefix tokens have positions -P..-1), so for a query at position i a slot is
visible when pos <= i and, for a ring slot, pos > i - W. This realises
`merge_mask(codes, W, K_cap)` exactly, overflow included.

mode='causal' is the full (plain LlamaGen) cache: P + L slots, position j in slot P + j.
Shapes: k/v (layers, B, H, C, Dh); positions (B, C) int64. The buffers are updated in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mergevq_jax.models.ar import cache_layout
# The slot layout is pure Python (no JAX), shared with the JAX model; re-exported here.
from mergevq_jax.models.ar.cache_layout import EMPTY, cache_bytes  # noqa: F401


class CacheLayout(cache_layout.CacheLayout):
  """Static description of the slots; `make`, `num_slots` and `ring_start` are the
  pure-Python `mergevq_jax.models.ar.cache_layout.CacheLayout`'s, shared with JAX."""
  __slots__ = ()

  def ring_slots(self, device=None) -> torch.Tensor:
    """(C,) bool: which slots belong to the ring (none in the causal cache)."""
    return torch.arange(self.num_slots, device=device) >= self.ring_start


@dataclass
class CacheState:
  k: torch.Tensor            # (layers, B, H, C, Dh)
  v: torch.Tensor
  positions: torch.Tensor    # (B, C) int64 raster position of each slot, EMPTY if unused
  kept_codes: torch.Tensor   # (B, max(K_cap, 1)) int64 codes in the kept region, in order
  num_kept: torch.Tensor     # (B,) int64 kept slots used (causal: codes fed)
  overflow: torch.Tensor     # (B,) int64 positions whose new code found the region full


def init_cache(layout: CacheLayout, batch: int, num_layers: int, num_heads: int,
               head_dim: int, device=None, dtype=torch.float32) -> CacheState:
  shape = (num_layers, batch, num_heads, layout.num_slots, head_dim)
  return CacheState(
      k=torch.zeros(shape, dtype=dtype, device=device),
      v=torch.zeros(shape, dtype=dtype, device=device),
      positions=torch.full((batch, layout.num_slots), EMPTY, dtype=torch.long, device=device),
      kept_codes=torch.full((batch, max(layout.keep_cap, 1)), -1, dtype=torch.long,
                            device=device),
      num_kept=torch.zeros((batch,), dtype=torch.long, device=device),
      overflow=torch.zeros((batch,), dtype=torch.long, device=device))


def assign_slot(layout: CacheLayout, cache: CacheState, codes: torch.Tensor, position: int
                ) -> torch.Tensor:
  """Slot (B,) int64 of the code at raster `position` per sample for codes (B,); updates
  the bookkeeping (kept codes, counters) in place."""
  P = layout.prefix
  codes = codes.long()
  if layout.mode == "causal":
    cache.num_kept += 1
    return torch.full(codes.shape, P + position, dtype=torch.long, device=codes.device)
  cap = layout.keep_cap
  index = torch.arange(cap, device=codes.device)[None, :]
  used = index < cache.num_kept[:, None]
  in_kept = torch.any((cache.kept_codes == codes[:, None]) & used, dim=-1)
  room = cache.num_kept < cap
  keep = ~in_kept & room
  slot = torch.where(keep, P + cache.num_kept,
                     torch.full_like(cache.num_kept, P + cap + position % layout.window))
  write = keep[:, None] & (index == cache.num_kept[:, None])
  cache.kept_codes = torch.where(write, codes[:, None], cache.kept_codes)
  cache.num_kept = cache.num_kept + keep.long()
  cache.overflow = cache.overflow + (~in_kept & ~room).long()
  return slot


def record_position(cache: CacheState, slots: torch.Tensor, position: int) -> None:
  """Mark `slots` (B,) as holding raster `position`."""
  batch = torch.arange(slots.shape[0], device=slots.device)
  cache.positions[batch, slots] = position


def visible_slots(layout: CacheLayout, cache: CacheState, position: int) -> torch.Tensor:
  """(B, C) bool: slots a query at raster `position` attends to (after its own write)."""
  pos = cache.positions
  window = layout.window if layout.mode == "merge" else layout.length
  in_ring = pos > position - window
  ring = layout.ring_slots(pos.device)[None, :]
  return (pos <= position) & torch.where(ring, in_ring, pos != EMPTY)


def write_kv(cache: CacheState, layer: int, slots: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
  """Write one token's k, v (B, H, Dh) into layer `layer` of the caches at `slots` (B,)."""
  batch = torch.arange(slots.shape[0], device=slots.device)
  cache.k[layer, batch, :, slots] = k
  cache.v[layer, batch, :, slots] = v
