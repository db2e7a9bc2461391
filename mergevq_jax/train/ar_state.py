"""MergeAR (stage 2) train state and optimizer: parameters, AdamW state, optional EMA.

AdamW(b1, b2, weight decay on matrices only), linear warmup then constant or cosine,
global-norm clipping. The state is one pytree of arrays, created directly in its sharded
layout; `params` and `ema` are checkpointed as items of their own (`mergevq_jax.checkpoint`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mergevq_jax import sharding
from mergevq_jax.models.ar.mergear import MergeAR


class ARTrainState(NamedTuple):
  step: jax.Array
  params: Any           # nnx.State of MergeAR
  opt_state: Any
  ema: Any              # EMA of params ({} when train.ema_decay = 0)
  nonfinite: jax.Array  # consecutive non-finite steps
  skipped: jax.Array    # all skipped steps


def lr_schedule(config) -> optax.Schedule:
  t = config.train
  warmup = max(int(t.warmup_steps), 0)
  if t.schedule == "cosine":
    main = optax.cosine_decay_schedule(t.lr, max(t.steps - warmup, 1))
  else:
    main = optax.constant_schedule(t.lr)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), main], [warmup])


def optimizer(config) -> optax.GradientTransformation:
  """AdamW; no weight decay on norms (1-D parameters); clipping first."""
  t = config.train
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  adamw = optax.adamw(lr_schedule(config), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                      mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw) if t.grad_clip else adamw


def _init(config) -> ARTrainState:
  params = nnx.state(MergeAR(config, rngs=nnx.Rngs(config.seed)), nnx.Param)
  ema = jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else {}
  zero = jnp.zeros((), jnp.int32)
  return ARTrainState(step=zero, params=params, opt_state=optimizer(config).init(params),
                      ema=ema, nonfinite=zero, skipped=zero)


def abstract_state(config) -> ARTrainState:
  return jax.eval_shape(lambda: _init(config))


def create_state(config, mesh, rules) -> tuple[ARTrainState, Any]:
  """Initialise the MergeAR train state sharded on `mesh`. Returns (state, shardings)."""
  return sharding.init_state(lambda: _init(config), mesh, rules)


def graphdef(config) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0))))
