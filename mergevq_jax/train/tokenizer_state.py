"""Stage-1 train state: tokenizer and discriminator parameters, optimizer states, EMA.

Everything is one pytree of arrays (nnx.State for parameters), created directly in its
sharded layout; `params` and `ema` are checkpointed as items of their own
(`mergevq_jax.checkpoint`), the rest as one more. Frozen networks (LPIPS, teacher) are not part
of it: they are inputs of the step, loaded from user files.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mergevq_jax import sharding
from mergevq_jax.models.discriminator import PatchDiscriminator
from mergevq_jax.models.tokenizer import Tokenizer
from mergevq_jax.train.losses import LeCAMState


class TrainState(NamedTuple):
  step: jax.Array          # int32 scalar, optimizer steps taken (skipped ones included)
  params: Any              # nnx.State of the tokenizer
  opt_state: Any
  ema: Any                 # EMA of params
  disc: Any                # nnx.State of the discriminator
  disc_opt_state: Any
  lecam: LeCAMState
  nonfinite: jax.Array     # int32: consecutive steps skipped for non-finite loss/grads
  skipped: jax.Array       # int32: all steps skipped so far


class Graphs(NamedTuple):
  """Static halves of the split modules (hashable), for nnx.merge inside jit."""
  tokenizer: nnx.GraphDef
  disc: nnx.GraphDef | None


def lr_schedule(config) -> optax.Schedule:
  """Constant lr, x0.1 at each fraction in train.lr_drops of train.steps."""
  t = config.train
  bounds = {max(1, int(f * t.steps)): 0.1 for f in t.lr_drops}
  return optax.piecewise_constant_schedule(t.lr, bounds)


def optimizer(config) -> optax.GradientTransformation:
  """Adam(b1, b2) without weight decay, optional global-norm clipping."""
  t = config.train
  adam = optax.adam(lr_schedule(config), b1=t.b1, b2=t.b2)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adam) if t.grad_clip else adam


def _make_modules(config):
  tok = Tokenizer(config, rngs=nnx.Rngs(config.seed))
  disc = (PatchDiscriminator(config.disc.base_channels, config.disc.num_layers,
                             rngs=nnx.Rngs(config.seed + 1), platform=config.platform)
          if config.disc.enabled else None)
  return tok, disc


def graphs(config) -> Graphs:
  tok, disc = nnx.eval_shape(lambda: _make_modules(config))
  return Graphs(nnx.graphdef(tok), None if disc is None else nnx.graphdef(disc))


def _init(config) -> TrainState:
  tok, disc = _make_modules(config)
  params = nnx.state(tok)
  dparams = nnx.state(disc) if disc is not None else {}
  tx = optimizer(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      ema=jax.tree.map(jnp.copy, params), disc=dparams, disc_opt_state=tx.init(dparams),
      lecam=LeCAMState.zeros(), nonfinite=jnp.zeros((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32))


def abstract_state(config) -> TrainState:
  return jax.eval_shape(lambda: _init(config))


def create_state(config, mesh, rules) -> tuple[TrainState, Any]:
  """Initialise the train state sharded on `mesh`. Returns (state, its shardings)."""
  return sharding.init_state(lambda: _init(config), mesh, rules)
