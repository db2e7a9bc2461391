"""Trained models from run directories: the config saved beside the checkpoints, and the
weights (EMA by default) of the latest checkpoint, restored onto one device.

Weights only: the checkpoint's `params` or `ema` item is read into the model's own
abstract state; no optimizer state is built and nothing under `mergevq_jax.train` is
imported (evaluation, export and notebooks use this without the training code).
"""
from __future__ import annotations

from flax import nnx

from mergevq_jax import checkpoint, sharding
from mergevq_jax.run_dir import load_config

__all__ = ["load_config", "load_mergear", "load_model", "load_tokenizer"]


def _model_class(stage: str):
  if stage == "tokenizer":
    from mergevq_jax.models.tokenizer import Tokenizer
    return Tokenizer
  from mergevq_jax.models.ar.mergear import MergeAR
  return MergeAR


def load_model(workdir: str, stage: str, use_ema: bool = True):
  """(model of `stage` with trained weights, its config, checkpoint step).

  The EMA is used when `use_ema` and the run kept one (MergeAR: train.ema_decay > 0).
  """
  if stage not in checkpoint.LAYOUTS:
    raise ValueError(f"unknown stage {stage!r}; known stages: {sorted(checkpoint.LAYOUTS)}")
  config = load_config(workdir)
  if config.get("stage") != stage:
    raise ValueError(f"{workdir!r} is not a {stage} run (config.stage={config.get('stage')!r})")
  cls = _model_class(stage)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
  has_ema = stage == "tokenizer" or config.train.ema_decay > 0
  field = "ema" if use_ema and has_ema else "params"
  mesh = sharding.make_mesh((-1, 1, 1))
  shardings = sharding.state_shardings(abstract, mesh, sharding.DEFAULT_RULES)
  ckpt = checkpoint.Checkpointer(workdir, keep=1, layout=checkpoint.LAYOUTS[stage])
  try:
    params, meta = ckpt.restore_weights(field, abstract, shardings)
  finally:
    ckpt.close()
  return nnx.merge(graphdef, params), config, int(meta["step"])


def load_tokenizer(workdir: str, use_ema: bool = True):
  """(Tokenizer with trained weights, its config, checkpoint step) from a stage-1 run."""
  return load_model(workdir, "tokenizer", use_ema)


def load_mergear(workdir: str, use_ema: bool = True):
  """(MergeAR with trained weights, its config, checkpoint step) from a stage-2 run. The
  EMA is used when the run kept one (train.ema_decay > 0)."""
  return load_model(workdir, "mergear", use_ema)
