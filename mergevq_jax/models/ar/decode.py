"""MergeAR decoding: one jitted `lax.scan` over the L raster positions with the fixed-shape
KV cache of `kv_cache` (prefix + K_cap kept slots + a ring of W, or the full causal cache).
On the 'gpu' and 'tpu' platforms each position runs the blocks as a `lax.scan` over the
stacked layer parameters and cache slabs, so the compiled program does not grow with
depth; on 'cpu' the layers are unrolled (`scans_layers`).

`teacher_forced_logits` feeds given codes (for the equivalence tests against the full
forward under `merge_mask`); `generate` samples them, with classifier-free guidance as
conditional and null-class rows of one batch. Sampling controls, class ids, the merge
instruction and the RNG key are traced, so changing them never recompiles; the cache
layout (mode, K_cap, W) and whether guidance is on are static.

`Generator` is the host-side entry point: it validates its inputs (ValueError before
anything is traced) and calls the jitted decoder.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.models.ar import kv_cache
from mergevq_jax.models.ar.blocks import attend, block_finish, block_qkv, join_codes
from mergevq_jax.models.ar.kv_cache import CacheLayout, CacheState
from mergevq_jax.models.ar.mergear import PREFIX, MergeAR
from mergevq_jax.models.ar.sampling import SamplingParams, guide, sample


class DecodeStats(NamedTuple):
  kept_slots_used: jax.Array   # (B,) int32
  overflow: jax.Array          # (B,) int32 new codes that found the kept region full


def _step(model: MergeAR, layers, layout: CacheLayout, cache: CacheState, x: jax.Array,
          angles: jax.Array, slots: jax.Array, position, unroll: bool = False
          ) -> tuple[jax.Array, CacheState]:
  """Feed one token per row: x (R, 1, D) at raster `position` into `slots` (R,).
  `layers`: from `decoder_layers`. Returns the final-normed hidden state (R, D) and the
  cache. `unroll` runs the stacked layers as a Python loop (a loop-free program with the
  scan's memory traffic, for XLA's cost analysis: `mergevq_jax.aot`)."""
  eps = model.config.model.norm_eps
  cache = kv_cache.record_position(cache, slots, position)
  visible = kv_cache.visible_slots(layout, cache, position)[:, None, :]

  def block(x, p, k_cache, v_cache):
    q, k, v = block_qkv(p, x, angles, eps)
    k_cache, v_cache = kv_cache.write_kv(k_cache, v_cache, slots, k[:, :, 0], v[:, :, 0])
    return block_finish(p, x, attend(q, k_cache, v_cache, visible), eps), k_cache, v_cache

  if isinstance(cache.k, tuple):   # per-layer slabs, layers unrolled
    ks, vs = [], []
    for p, k_cache, v_cache in zip(layers, cache.k, cache.v, strict=True):
      x, k_cache, v_cache = block(x, p, k_cache, v_cache)
      ks.append(k_cache)
      vs.append(v_cache)
    ks, vs = tuple(ks), tuple(vs)
  else:   # stacked slabs as the carry of a scan over layers, updated in place
    def body(carry, inputs):
      # The new k, v go straight into the stacked buffers and attention reads its layer's
      # slab from them. Slicing the slab out, writing into it and putting it back moved
      # the slab three more times per layer: 9x the bytes of the weights + cache per
      # position of MergeAR-L on TPU, now 2.75x (python -m mergevq_jax.aot).
      x, ks, vs = carry
      p, layer = inputs
      q, k, v = block_qkv(p, x, angles, eps)
      ks, vs = kv_cache.write_kv_stacked(ks, vs, layer, slots, k[:, :, 0], v[:, :, 0])
      o = attend(q, ks[layer], vs[layer], visible)
      return (block_finish(p, x, o, eps), ks, vs), None

    carry = (x, cache.k, cache.v)
    if unroll:
      for layer in range(cache.k.shape[0]):
        carry, _ = body(carry, (jax.tree.map(lambda a: a[layer], layers), layer))
    else:
      carry, _ = jax.lax.scan(body, carry, (layers, jnp.arange(cache.k.shape[0])))
    x, ks, vs = carry
  return model.final(x)[:, 0], cache._replace(k=ks, v=vs)


def scans_layers(model: MergeAR) -> bool:
  """Whether the decoder scans over the stacked layers (stacked cache), from the config's
  platform: on 'gpu' and 'tpu' it does, so the program does not grow with depth (MergeAR-L
  compiles as fast as tiny). On 'cpu' it unrolls them over per-layer cache slabs: XLA:CPU
  copies each slab out of a stacked buffer before attention reads it and pays per loop
  iteration; the scan made a 128 x 4 model decode 2.8x (batch 1) and 2.4x (batch 64)
  slower there."""
  return model.config.platform != "cpu"


def decoder_layers(model: MergeAR):
  """The layer parameters as the decoder reads them: stacked LayerParams when it scans
  (`scans_layers`), else a tuple of per-layer LayerParams, sliced once per decode (not
  at every position)."""
  stacked = model.layer_params()
  if scans_layers(model):
    return stacked
  return tuple(jax.tree.map(lambda a, i=i: a[i], stacked)
               for i in range(model.config.model.num_layers))


def prefill(model: MergeAR, layers, layout: CacheLayout, class_ids: jax.Array,
            keep_index: jax.Array) -> tuple[jax.Array, CacheState]:
  """Run the prefix [class, M_K] into a fresh cache; returns the hidden state at M_K
  (which predicts the first code), (R, D)."""
  m = model.config.model
  rows = class_ids.shape[0]
  cache = kv_cache.init_cache(layout, rows, m.num_layers, m.num_heads,
                              m.width // m.num_heads, model.dtype, stacked=scans_layers(model))
  x = model.embed_prefix(class_ids, keep_index)
  no_rotation = jnp.zeros((1, 1, m.width // m.num_heads // 2))
  h = None
  for t in range(PREFIX):
    slots = jnp.full((rows,), t, jnp.int32)
    h, cache = _step(model, layers, layout, cache, x[:, t:t + 1], no_rotation, slots,
                     t - PREFIX)
  return h, cache


def feed_code(model: MergeAR, layers, layout: CacheLayout, cache: CacheState,
              codes: jax.Array, position, unroll: bool = False) -> tuple[jax.Array, CacheState]:
  """Feed codes (R,) at raster `position` (traced); returns (hidden (R, D), cache)."""
  slots, cache = kv_cache.assign_slot(layout, cache, codes, position)
  angles = jax.lax.dynamic_index_in_dim(model.code_angles(), position, keepdims=True)[None]
  return _step(model, layers, layout, cache, model.embed_codes(codes[:, None]), angles,
               slots, position, unroll)


def _stats(layout: CacheLayout, cache: CacheState, last_codes: jax.Array, rows: int
           ) -> DecodeStats:
  """Account the last code (never fed: it predicts nothing) in the slot bookkeeping."""
  _, cache = kv_cache.assign_slot(layout, cache, last_codes, layout.length - 1)
  return DecodeStats(cache.num_kept[:rows], cache.overflow[:rows])


def teacher_forced_logits(model: MergeAR, layout: CacheLayout, codes: jax.Array,
                          class_ids: jax.Array, keep_index: jax.Array
                          ) -> tuple[list[jax.Array], DecodeStats]:
  """Logits for every position from the cached scan decoder fed `codes` (B, L):
  one (B, L, 2^bits_k) array per sub-code, as `MergeAR.__call__` returns them."""
  layers = decoder_layers(model)
  h0, cache = prefill(model, layers, layout, class_ids, keep_index)

  def body(cache, inputs):
    code, i = inputs
    h, cache = feed_code(model, layers, layout, cache, code, i)
    return cache, h

  L = codes.shape[1]
  cache, hs = jax.lax.scan(body, cache, (codes[:, :-1].T, jnp.arange(L - 1)))
  h_all = jnp.concatenate([h0[:, None], jnp.swapaxes(hs, 0, 1)], axis=1)
  return (model.teacher_logits(h_all, codes),
          _stats(layout, cache, codes[:, -1], codes.shape[0]))


def _pick_code(model: MergeAR, h: jax.Array, key: jax.Array, params: SamplingParams,
               guidance: bool) -> jax.Array:
  """Sample one code per sample from hidden states h (R, D): sub-code heads in order,
  each guided and filtered on its own vocabulary. Returns (B,) codes, B = R / 2 with
  guidance."""
  subs, row_subs = [], []
  for k, sub_key in enumerate(jax.random.split(key, len(model.heads))):
    logits = model.head_logits(h, k, row_subs)
    if guidance:
      logits = guide(logits, params.cfg_scale)
    s = sample(sub_key, logits, params)
    subs.append(s)
    row_subs.append(jnp.concatenate([s, s]) if guidance else s)
  return join_codes(subs, model.config.model.sub_code_bits)


def generate(model: MergeAR, layout: CacheLayout, key: jax.Array, class_ids: jax.Array,
             keep_index: jax.Array, params: SamplingParams, guidance: bool = False
             ) -> tuple[jax.Array, DecodeStats]:
  """Sample (B, L) int32 codes for class ids (B,) and merge-instruction indices (B,).
  With guidance, null-class rows run in the same batch (2B rows)."""
  batch = class_ids.shape[0]
  if guidance:
    null = jnp.full_like(class_ids, model.config.model.num_classes)
    class_ids = jnp.concatenate([class_ids, null])
    keep_index = jnp.concatenate([keep_index, keep_index])
  rows = lambda c: jnp.concatenate([c, c]) if guidance else c
  layers = decoder_layers(model)
  h0, cache = prefill(model, layers, layout, class_ids, keep_index)

  def body(carry, i):
    cache, h, key = carry
    key, sub = jax.random.split(key)
    code = _pick_code(model, h, sub, params, guidance)
    h, cache = feed_code(model, layers, layout, cache, rows(code), i)
    return (cache, h, key), code

  (cache, h, key), codes = jax.lax.scan(body, (cache, h0, key), jnp.arange(layout.length - 1))
  last = _pick_code(model, h, key, params, guidance)
  codes = jnp.concatenate([codes.T, last[:, None]], axis=1)
  return codes, _stats(layout, cache, rows(last), batch)


def make_generate_fn(graphdef: nnx.GraphDef, layout: CacheLayout, guidance: bool, **jit_kwargs):
  """jax.jit of `generate` as fn(state, key, class_ids, keep_index, params)."""
  @functools.partial(jax.jit, **jit_kwargs)
  def fn(state, key, class_ids, keep_index, params):
    return generate(nnx.merge(graphdef, state), layout, key, class_ids, keep_index, params,
                    guidance)
  return fn


class Generator:
  """Validated, compiled-once sampling from a MergeAR state.

  gen = Generator(model)
  codes, stats = gen(key, class_ids=[1, 2], num_keep=144, cfg_scale=4.0, top_k=0)
  gen.state = new_params     # same graph, other weights: no recompilation
  """

  def __init__(self, model: MergeAR, window: int | None = None, mode: str | None = None):
    self.graphdef, self.state = nnx.split(model)
    self.model = model
    m = model.config.model
    self.window = int(m.window if window is None else window)
    self.mode = mode or m.attention
    self._fns: dict = {}

  def layout(self, keep_cap: int) -> CacheLayout:
    return CacheLayout.make(PREFIX, self.model.num_positions, self.mode, keep_cap, self.window)

  def check(self, class_ids, num_keep: int, keep_cap: int | None) -> tuple[jax.Array, int]:
    """Validated class ids and K_cap. A jax.Array of ids (e.g. a global batch split over
    the mesh) keeps its sharding; anything else becomes an int32 array."""
    num_classes = self.model.config.model.num_classes
    ids = class_ids if isinstance(class_ids, jax.Array) else np.asarray(class_ids)
    if ids.ndim != 1 or ids.size == 0 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"class_ids must be a non-empty 1-D integer array, got {ids!r}")
    lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
    if lo < 0 or hi >= num_classes:
      shown = sorted(set(np.asarray(ids).tolist())) if not isinstance(ids, jax.Array) else (
          f"values in [{lo}, {hi}]")
      raise ValueError(f"class ids must be in [0, {num_classes}), got {shown}")
    self.model.keep_index(num_keep)
    keep_cap = int(num_keep if not keep_cap else keep_cap)
    if keep_cap < num_keep:
      raise ValueError(f"K_cap={keep_cap} is smaller than the merge instruction K={num_keep}")
    return ids.astype(jnp.int32), keep_cap

  def __call__(self, key, class_ids, num_keep: int, *, keep_cap: int | None = None,
               temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, guidance: bool | None = None
               ) -> tuple[jax.Array, DecodeStats]:
    """codes (B, L) and per-sample stats. `guidance` (static: whether null-class rows
    run) defaults to cfg_scale != 1; pass guidance=True to sweep scales, 1 included,
    without recompiling."""
    ids, keep_cap = self.check(class_ids, num_keep, keep_cap)
    params = SamplingParams.make(temperature, top_k, top_p, cfg_scale)
    guidance = bool(cfg_scale != 1.0) if guidance is None else guidance
    layout = self.layout(keep_cap)
    fn = self._fns.get((layout, guidance))
    if fn is None:
      fn = self._fns[(layout, guidance)] = make_generate_fn(self.graphdef, layout, guidance)
    ids = jnp.asarray(ids)
    keep_index = jnp.full_like(ids, self.model.keep_index(num_keep))
    return fn(self.state, key, ids, keep_index, params)

  def compilations(self) -> int:
    return sum(fn._cache_size() for fn in self._fns.values())
