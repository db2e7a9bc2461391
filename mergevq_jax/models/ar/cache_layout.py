"""The slot layout of MergeAR's fixed-shape KV cache (spec section 6), in pure Python.

Stdlib only (no JAX, no torch): the JAX cache (`mergevq_jax.models.ar.kv_cache`) and the
PyTorch one (`mergevq_jax.export.torch_modules.ar.kv_cache`) subclass `CacheLayout` with
their array-valued `ring_slots()` and re-export `EMPTY` and `cache_bytes`.

Slots: [0, P) the prefix; [P, P + K_cap) the kept region, filled in order; [P + K_cap,
P + K_cap + W) a ring where window position j lives in slot j mod W. mode='causal' is the
plain LlamaGen cache: P + L slots, position j in slot P + j, no ring.
"""
from __future__ import annotations

from typing import NamedTuple

EMPTY = -(2 ** 30)   # position of a slot nothing was written to


class CacheLayout(NamedTuple):
  """Static description of the slots (hashable: a jit static argument)."""
  prefix: int
  length: int        # L code positions
  mode: str          # 'merge' or 'causal'
  keep_cap: int = 0  # K_cap ('merge')
  window: int = 1    # W ('merge')

  @classmethod
  def make(cls, prefix: int, length: int, mode: str, keep_cap: int = 0, window: int = 1
           ) -> "CacheLayout":
    if mode == "causal":
      return cls(prefix, length, mode)
    if mode != "merge":
      raise ValueError(f"cache mode must be 'merge' or 'causal', got {mode!r}")
    if not 1 <= keep_cap <= length:
      raise ValueError(f"K_cap must be in [1, L={length}], got {keep_cap}")
    if window < 1:
      raise ValueError(f"window W must be >= 1, got {window}")
    return cls(prefix, length, mode, int(keep_cap), int(window))

  @property
  def num_slots(self) -> int:
    if self.mode == "causal":
      return self.prefix + self.length
    return self.prefix + self.keep_cap + self.window

  @property
  def ring_start(self) -> int:
    """First slot of the ring (num_slots in the causal cache, which has none)."""
    return self.num_slots - (self.window if self.mode == "merge" else 0)


def cache_bytes(layout: CacheLayout, batch: int, num_layers: int, width: int, itemsize: int = 4
                ) -> int:
  """Bytes of the K and V buffers."""
  return 2 * num_layers * batch * layout.num_slots * width * itemsize
