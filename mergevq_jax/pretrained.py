"""Trained models from run directories: the config saved beside the checkpoints, and the
weights (EMA by default) of the latest checkpoint.

Both trainers write <workdir>/config.json at start; `load_tokenizer` and `load_mergear`
rebuild the module from it and restore only what inference needs, onto one device.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from mergevq_jax import sharding

CONFIG_FILE = "config.json"


def save_config(workdir: str, config) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{path} not found: {workdir!r} is not a mergevq_jax run directory")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _tuples(tree):
  """JSON lists back to tuples (configs use tuples for sequences)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def _restore(workdir, abstract_state, layout, field: str):
  """`field` ('ema' or 'params') of the latest checkpoint, restored onto one device."""
  from mergevq_jax.train.checkpoint import Checkpointer
  mesh = sharding.make_mesh((-1, 1, 1))
  shardings = sharding.state_shardings(abstract_state, mesh, sharding.DEFAULT_RULES)
  ckpt = Checkpointer(workdir, keep=1, layout=layout)
  try:
    state, meta = ckpt.restore(abstract_state, shardings)
  finally:
    ckpt.close()
  return getattr(state, field), int(meta["step"])


def load_tokenizer(workdir: str, use_ema: bool = True):
  """(Tokenizer with trained weights, its config, checkpoint step) from a stage-1 run."""
  from mergevq_jax.models.tokenizer import Tokenizer
  from mergevq_jax.train import state as state_lib
  from mergevq_jax.train.checkpoint import LAYOUT_VERSION
  config = load_config(workdir)
  if config.get("stage", "tokenizer") != "tokenizer":
    raise ValueError(f"{workdir!r} is a {config.stage} run, not a tokenizer run")
  params, step = _restore(workdir, state_lib.abstract_state(config), LAYOUT_VERSION,
                          "ema" if use_ema else "params")
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Tokenizer(config, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params), config, step


def load_mergear(workdir: str, use_ema: bool = True):
  """(MergeAR with trained weights, its config, checkpoint step) from a stage-2 run. The
  EMA is used when the run kept one (train.ema_decay > 0)."""
  from mergevq_jax.models.mergear import MergeAR
  from mergevq_jax.train import ar_step
  from mergevq_jax.train.checkpoint import MERGEAR_LAYOUT_VERSION
  config = load_config(workdir)
  if config.get("stage", "") != "mergear":
    raise ValueError(f"{workdir!r} is not a MergeAR run (config.stage={config.get('stage')!r})")
  field = "ema" if use_ema and config.train.ema_decay > 0 else "params"
  params, step = _restore(workdir, ar_step.abstract_state(config),
                          MERGEAR_LAYOUT_VERSION, field)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, params), config, step
