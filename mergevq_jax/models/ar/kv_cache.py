"""MergeAR's fixed-shape KV cache (spec section 6): prefix + kept region + ring of W.

Slots: [0, P) the prefix; [P, P + K_cap) the kept region, filled in order; [P + K_cap,
P + K_cap + W) a ring where window position j lives in slot j mod W. A kept-code buffer
(K_cap codes) decides where the code at position j goes: a code not yet kept while the
region has room is kept; anything else goes to the ring (an unseen code that finds the
region full is counted as overflow). A position buffer records each slot's raster
position (prefix tokens have positions -P..-1), so for a query at position i a slot is
visible when pos <= i and, for a ring slot, pos > i - W. This realises
`merge_mask(codes, W, K_cap)` exactly, overflow included.

mode='causal' is the plain LlamaGen cache (P + L slots, position j in slot P + j).
Shapes: k/v either stacked, (layers, B, H, C, Dh), which the decoder scans over with the
stacked layer parameters, or a tuple of per-layer (B, H, C, Dh) slabs (`stacked=False`,
for a decoder that unrolls its layers: XLA:CPU copies a slab sliced out of a stacked
buffer before attention reads it); heads-major, as attention reads them; logical axes
`CACHE_AXES`. positions (B, C) int32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mergevq_jax.models.ar import cache_layout
# The slot layout is pure Python, shared with the PyTorch port; re-exported here.
from mergevq_jax.models.ar.cache_layout import EMPTY, cache_bytes  # noqa: F401
from mergevq_jax.sharding import constrain

# Logical axes of the k/v buffers (the rules table maps them onto the mesh).
CACHE_AXES = ("layers", "cache_batch", "cache_heads", "cache_slots", "head_dim")


class CacheLayout(cache_layout.CacheLayout):
  """Static description of the slots (hashable: a jit static argument); `make`,
  `num_slots` and `ring_start` are the pure-Python `cache_layout.CacheLayout`'s."""
  __slots__ = ()

  def ring_slots(self) -> jax.Array:
    """(C,) bool: which slots belong to the ring."""
    return jnp.arange(self.num_slots) >= self.ring_start


class CacheState(NamedTuple):
  k: jax.Array | tuple  # (layers, B, H, C, Dh), or per layer (B, H, C, Dh)
  v: jax.Array | tuple
  positions: jax.Array    # (B, C) int32 raster position of each slot, EMPTY if unused
  kept_codes: jax.Array   # (B, max(K_cap, 1)) int32 codes in the kept region, in order
  num_kept: jax.Array     # (B,) int32 kept slots used
  overflow: jax.Array     # (B,) int32 positions whose new code found the region full


def init_cache(layout: CacheLayout, batch: int, num_layers: int, num_heads: int,
               head_dim: int, dtype, stacked: bool = True) -> CacheState:
  shape = (batch, num_heads, layout.num_slots, head_dim)
  if stacked:
    zeros = lambda: constrain(jnp.zeros((num_layers, *shape), dtype), CACHE_AXES)
  else:
    zeros = lambda: tuple(constrain(jnp.zeros(shape, dtype), CACHE_AXES[1:])
                          for _ in range(num_layers))
  return CacheState(
      k=zeros(), v=zeros(),
      positions=jnp.full((batch, layout.num_slots), EMPTY, jnp.int32),
      kept_codes=jnp.full((batch, max(layout.keep_cap, 1)), -1, jnp.int32),
      num_kept=jnp.zeros((batch,), jnp.int32), overflow=jnp.zeros((batch,), jnp.int32))


def assign_slot(layout: CacheLayout, cache: CacheState, codes: jax.Array, position
                ) -> tuple[jax.Array, CacheState]:
  """Slot of the code at raster `position` (traced scalar) per sample, and the updated
  bookkeeping (kept codes, counters). codes (B,) int32 -> slots (B,) int32."""
  P = layout.prefix
  if layout.mode == "causal":
    slot = jnp.full(codes.shape, P, jnp.int32) + position
    return slot, cache._replace(num_kept=cache.num_kept + 1)
  cap = layout.keep_cap
  used = jnp.arange(cap)[None, :] < cache.num_kept[:, None]
  in_kept = jnp.any((cache.kept_codes == codes[:, None]) & used, axis=-1)
  room = cache.num_kept < cap
  keep = ~in_kept & room
  slot = jnp.where(keep, P + cache.num_kept, P + cap + position % layout.window)
  write = keep[:, None] & (jnp.arange(cap)[None, :] == cache.num_kept[:, None])
  cache = cache._replace(
      kept_codes=jnp.where(write, codes[:, None], cache.kept_codes),
      num_kept=cache.num_kept + keep.astype(jnp.int32),
      overflow=cache.overflow + (~in_kept & ~room).astype(jnp.int32))
  return slot.astype(jnp.int32), cache


def record_position(cache: CacheState, slots: jax.Array, position) -> CacheState:
  """Mark `slots` (B,) as holding raster `position`."""
  batch = jnp.arange(slots.shape[0])
  return cache._replace(positions=cache.positions.at[batch, slots].set(position))


def visible_slots(layout: CacheLayout, cache: CacheState, position) -> jax.Array:
  """(B, C) bool: slots a query at raster `position` attends to (after its own write)."""
  pos = cache.positions
  window = layout.window if layout.mode == "merge" else layout.length
  in_ring = pos > position - window
  return (pos <= position) & jnp.where(layout.ring_slots()[None, :], in_ring, pos != EMPTY)


def write_kv(k_cache: jax.Array, v_cache: jax.Array, slots: jax.Array, k: jax.Array,
             v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Write one token's k, v (B, H, Dh) into one layer's (B, H, C, Dh) caches at `slots` (B,)."""
  batch = jnp.arange(slots.shape[0])
  return k_cache.at[batch, :, slots].set(k), v_cache.at[batch, :, slots].set(v)


def write_kv_stacked(ks: jax.Array, vs: jax.Array, layer, slots: jax.Array, k: jax.Array,
                     v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`write_kv` into layer `layer` (traced) of stacked (layers, B, H, C, Dh) caches."""
  batch = jnp.arange(slots.shape[0])
  return ks.at[layer, batch, :, slots].set(k), vs.at[layer, batch, :, slots].set(v)
