"""The functions the trainers and the sampler run, as jitted functions with abstract,
sharded inputs (ShapeDtypeStructs on a mesh of a TPU topology's devices), ready to lower.

  * tokenizer: the stage-1 step (`train.tokenizer_step`, as `TokenizerStage` builds it)
    once per K candidate, with the frozen LPIPS and DINOv2 teacher in the step when
    `frozen_nets` (the paper's training; their weights are abstract here);
  * mergear: the stage-2 step (`train.ar_step`), and the decoder
    (`models.ar.decode.make_generate_fn`) with the pruned ('merge') and the full
    ('causal') cache, without and with classifier-free guidance.

Training uses the config's mesh and rules. Decoding keeps the weights replicated and
splits the batch over every chip (a mesh of (chips, 1, 1) with the same rules): an
fsdp-sharded decoder would gather every layer's weights at every generated position.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mergevq_jax import sharding


class Target(NamedTuple):
  name: str                 # 'train K=144', 'decode pruned cfg'
  kind: str                 # 'train', 'decode' or 'step' (one decode position)
  fn: Any                   # the jitted function
  args: tuple               # abstract arguments (static ones included, in order)
  mesh: Any
  rules: tuple
  global_batch: int         # images (tokenizer) or sequences (MergeAR) per call
  flops: Callable[[], float]  # model FLOPs of one call over the whole batch (aot.flops)
  info: dict                # what the estimate needs beyond the compiled program


def batch_sharding(mesh, rules) -> NamedSharding:
  """The sharding the training loop puts every batch array in (`loop._train`)."""
  return NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, rules, mesh))


def _batch_array(mesh, rules, shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, rules))


def _frozen_networks(config, with_nets: bool):
  """(graphdefs, abstract states) of LPIPS and the teacher, as `load_frozen` gives them
  from the users' weight files (here abstract: nothing is read)."""
  from mergevq_jax.train.tokenizer_step import Frozen
  lo, m = config.loss, config.model
  if not with_nets:
    from mergevq_jax.train.tokenizer_trainer import load_frozen
    return load_frozen(config)
  graphs, states = {}, {}
  if lo.lpips_weight:
    from mergevq_jax.nets.vgg_lpips import LPIPS
    graphs["lpips"], states["lpips"] = nnx.split(nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0))))
  if lo.align_weight and m.align_head:
    from mergevq_jax.nets.dinov2 import DinoV2
    graphs["teacher"], states["teacher"] = nnx.split(nnx.eval_shape(
        lambda: DinoV2(rngs=nnx.Rngs(0), image_size=config.data.align_size)))
  return Frozen(**graphs), Frozen(**states)


def tokenizer_targets(config, mesh, per_chip_batch: int, keeps, frozen_nets: bool = True
                      ) -> list[Target]:
  """The stage-1 step at each K in `keeps`, global batch = per_chip_batch x chips."""
  from mergevq_jax.train import tokenizer_state
  from mergevq_jax.train.tokenizer_step import jit_train_step, make_train_step
  rules = sharding.rules_from_config(config)
  batch = per_chip_batch * mesh.devices.size
  abstract = tokenizer_state.abstract_state(config)
  shardings = sharding.state_shardings(abstract, mesh, rules)
  frozen_graphs, frozen = _frozen_networks(config, frozen_nets)
  frozen_shardings = sharding.state_shardings(frozen, mesh, rules)
  size, align = config.model.image_size, config.data.align_size
  images = {"image": _batch_array(mesh, rules, (batch, size, size, 3), jnp.float32)}
  if frozen.teacher is not None:
    for view in ("weak", "strong"):
      images[view] = _batch_array(mesh, rules, (batch, align, align, 3), jnp.float32)
  step = make_train_step(config, tokenizer_state.graphs(config), frozen_graphs)
  fn = jit_train_step(step, shardings, batch_sharding(mesh, rules), frozen_shardings, mesh)
  state = sharding.abstract_arrays(abstract, shardings)
  frozen_args = sharding.abstract_arrays(frozen, frozen_shardings)
  nets = [n for n, s in zip(frozen._fields, frozen) if s is not None]
  targets = []
  for k in keeps:
    flops = lambda k=k: _flops_of(lambda s, b, f: step(s, b, f, k), mesh, rules, state,
                                  images, frozen_args)
    targets.append(Target(f"train K={k}", "train", fn, (state, images, frozen_args, k), mesh,
                          rules, batch, flops, {"frozen": nets}))
  return targets


def _flops_of(fn, mesh, rules, *args) -> float:
  from mergevq_jax.aot.flops import function_flops
  with sharding.use_mesh(mesh, rules):
    return function_flops(fn, *args)


def mergear_train_target(config, mesh, per_chip_batch: int) -> Target:
  from mergevq_jax.models.ar.mergear import num_positions
  from mergevq_jax.train import ar_state, ar_step
  rules = sharding.rules_from_config(config)
  batch, length = per_chip_batch * mesh.devices.size, num_positions(config.model)
  abstract = ar_state.abstract_state(config)
  shardings = sharding.state_shardings(abstract, mesh, rules)
  step = ar_step.make_train_step(config, ar_state.graphdef(config))
  fn = ar_step.jit_train_step(step, shardings, batch_sharding(mesh, rules), mesh)
  state = sharding.abstract_arrays(abstract, shardings)
  data = {"codes": _batch_array(mesh, rules, (batch, length), jnp.int32),
          "keep": _batch_array(mesh, rules, (batch,), jnp.int32),
          "label": _batch_array(mesh, rules, (batch,), jnp.int32)}
  return Target("train", "train", fn, (state, data), mesh, rules, batch,
                lambda: _flops_of(step, mesh, rules, state, data), {"positions": length})


def decode_mesh(devices):
  """Every chip on 'data': weights replicated, the batch split over all chips."""
  return sharding.make_mesh((len(devices), 1, 1), devices)


def mergear_decode_targets(config, devices, per_chip_batch: int, caches=("merge", "causal"),
                           guidance=(False, True), keep_cap: int | None = None,
                           weights_dtype: str = "") -> list[Target]:
  """The decoder (`make_generate_fn`) for each cache mode and guidance setting, at the
  most sampled merge instruction K (K_cap = K unless given). `weights_dtype` ('' = as trained)
  casts the floating-point weights, as a decoding copy would be."""
  from mergevq_jax.models.ar import kv_cache
  from mergevq_jax.models.ar.decode import make_generate_fn
  from mergevq_jax.models.ar.kv_cache import CacheLayout
  from mergevq_jax.models.ar.mergear import PREFIX, MergeAR
  from mergevq_jax.models.ar.sampling import SamplingParams
  m = config.model
  mesh = decode_mesh(devices)
  rules = sharding.rules_from_config(config)
  model = nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0)))
  graphdef, abstract = nnx.split(model)
  if weights_dtype:
    cast = lambda x: (jax.ShapeDtypeStruct(x.shape, jnp.dtype(weights_dtype))
                      if jnp.issubdtype(x.dtype, jnp.floating) else x)
    abstract = jax.tree.map(cast, abstract)
  shardings = sharding.state_shardings(abstract, mesh, rules)
  state = sharding.abstract_arrays(abstract, shardings)
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  batch = per_chip_batch * len(devices)
  # K: the merge instruction sampled most (keep_values[1], the mode of the tokenizer's
  # keep_probs: 144 for G+R, 256 for G); K_cap = K unless given
  k = int(m.keep_values[min(1, len(m.keep_values) - 1)])
  keep_cap = keep_cap or k
  replicated = NamedSharding(mesh, P())
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=replicated)
  ids = _batch_array(mesh, rules, (batch,), jnp.int32)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        jax.eval_shape(SamplingParams.make))
  targets = []
  for mode in caches:
    layout = CacheLayout.make(PREFIX, model.num_positions, mode, keep_cap, m.window)
    for cfg in guidance:
      rows = batch * (2 if cfg else 1)
      cache = kv_cache.cache_bytes(layout, rows, m.num_layers, m.width,
                                   jnp.dtype(config.dtype).itemsize)
      fn = make_generate_fn(graphdef, layout, cfg)
      args = (state, key, ids, ids, params)
      name = f"decode {'pruned' if mode == 'merge' else 'full'}{' cfg' if cfg else ''}"
      steps = [_position_step(graphdef, model, layout, cfg, rows, state, key, params, mesh,
                              rules, n) for n in (1, 2)]
      targets.append(Target(
          name, "decode", fn, args, mesh, rules, batch,
          lambda fn=fn, args=args: _flops_of(fn, mesh, rules, *args),
          {"positions": model.num_positions, "weight_bytes": weight_bytes,
           "cache_bytes": cache, "steps": steps}))
  return targets


def _position_step(graphdef, model, layout, guidance: bool, rows: int, state, key, params,
                   mesh, rules, positions: int) -> Target:
  """`positions` generated positions as a loop-free program: the decoder's scan body
  (pick the code, feed it through every layer into the stacked cache) with the layer scan
  unrolled, `positions` times. XLA's cost analysis counts a loop body once, so the
  difference between the programs of 2 and 1 positions is what one position of the scan
  costs, without what a program pays once at its edges (layout copies of the cache)."""
  from mergevq_jax.models.ar import decode as md
  from mergevq_jax.models.ar import kv_cache
  m = model.config.model
  batch_spec = batch_sharding(mesh, rules)
  replicated = NamedSharding(mesh, P())
  cache = jax.eval_shape(lambda: kv_cache.init_cache(
      layout, rows, m.num_layers, m.num_heads, m.width // m.num_heads, model.dtype,
      stacked=md.scans_layers(model)))
  cache_spec = NamedSharding(mesh, sharding.logical_to_spec(kv_cache.CACHE_AXES, None, rules,
                                                            mesh))
  cache = cache._replace(
      k=jax.ShapeDtypeStruct(cache.k.shape, cache.k.dtype, sharding=cache_spec),
      v=jax.ShapeDtypeStruct(cache.v.shape, cache.v.dtype, sharding=cache_spec),
      **{f: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_spec)
         for f, x in cache._asdict().items() if f not in ("k", "v")})
  h = jax.ShapeDtypeStruct((rows, m.width), model.dtype, sharding=batch_spec)
  position = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)

  @functools.partial(jax.jit, donate_argnums=(1,))   # in place, as the scan's carry is
  def step(state, cache, h, key, position, params):
    model = nnx.merge(graphdef, state)
    layers = md.decoder_layers(model)
    for i in range(positions):
      key, sub = jax.random.split(key)
      code = md._pick_code(model, h, sub, params, guidance)
      code = jnp.concatenate([code, code]) if guidance else code
      h, cache = md.feed_code(model, layers, layout, cache, code, position + i, unroll=True)
    return h, cache

  args = (state, cache, h, key, position, params)
  return Target(f"{positions} position step", "step", step, args, mesh, rules, rows,
                lambda: _flops_of(step, mesh, rules, *args), {})
