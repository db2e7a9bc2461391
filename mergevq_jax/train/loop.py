"""The one training loop every stage runs: restore-or-init, the step loop with progress
bar, logs, NaN patience, periodic hooks and checkpoints, SIGTERM save, summary.json.

A stage (`tokenizer_trainer.TokenizerStage`, `ar_trainer.ARStage`) is a `Stage`: it
checks its config and data before anything is compiled, says how to build, restore and
step its train state, and adds its own periodic work (reconstructions, sample grids)
and summary entries. `run(stage, workdir)` does the rest.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding

from mergevq_jax import sharding
from mergevq_jax.checkpoint import Checkpointer, save_config
from mergevq_jax.train.logger import Logger


class Preemption:
  """Sets a flag on SIGTERM so the loop can checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True


def progress_bar(total: int, initial: int):
  """tqdm bar on process 0 when stderr is a terminal (quiet otherwise)."""
  from tqdm import tqdm
  quiet = jax.process_index() != 0 or not sys.stderr.isatty()
  return tqdm(total=total, initial=initial, disable=quiet, unit="step", dynamic_ncols=True)


def data_parallel(mesh) -> int:
  """Devices the batch is split over (mesh data x fsdp)."""
  return math.prod(mesh.shape[a] for a in ("data", "fsdp"))


def check_train_common(config, mesh) -> None:
  """ValueError unless train.steps is positive and the global batch splits over the
  data-parallel devices and the hosts."""
  t = config.train
  dp = data_parallel(mesh)
  if t.batch_size % dp or t.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the {dp} "
                     f"data-parallel devices and the {jax.process_count()} hosts")
  if t.steps < 1:
    raise ValueError(f"train.steps must be positive, got {t.steps}")


class Stage:
  """What one stage plugs into `run`. Subclasses set `layout` (the checkpoint layout
  tag), and in __init__ (after this one) check everything that can be checked before
  compiling and set `iterator` (a checkpointable grain iterator of host batches)."""

  layout: str
  iterator: Any

  def __init__(self, config):
    self.config = config
    self.mesh = sharding.mesh_from_config(config)
    self.rules = sharding.rules_from_config(config)

  def create_state(self) -> tuple[Any, Any]:
    """(train state initialised on the mesh, its shardings)."""
    raise NotImplementedError

  def abstract_state(self) -> Any:
    """The train state's ShapeDtypeStructs (restore target)."""
    raise NotImplementedError

  def make_step(self, shardings, batch_sharding) -> Callable:
    """step(state, batch of global arrays, step index) -> (state, metrics)."""
    raise NotImplementedError

  def device_batch(self, batch: dict, batch_sharding) -> dict:
    """A host batch (this process's slice) -> global arrays on the mesh."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items()}

  def log_extras(self) -> dict:
    """Scalars logged beside the step's metrics."""
    return {}

  def on_log(self, metrics: dict) -> dict:
    """Called at every log step with the step's host metrics; returns the progress-bar
    postfix."""
    return {}

  def begin(self, state, start: int, logger: Logger) -> None:
    """Once before the first step (start: the restored step, 0 for a new run)."""

  def periodic(self, state, step: int, logger: Logger) -> None:
    """After every step (not after the last one): the stage's own intervals."""

  def finish(self, state, step: int, logger: Logger) -> None:
    """After the last step, unless preempted."""

  def checkpoint_meta(self) -> dict:
    return {}

  def summary(self, state, step: int, workdir: str) -> dict:
    """Stage entries of summary.json."""
    return {}


def _nonfinite_message(nonfinite: int, step: int, last_saved: int | None) -> str:
  where = (f"the last good state is in the checkpoint of step {last_saved}"
           if last_saved is not None else "no checkpoint holds a good state")
  return (f"{nonfinite} consecutive steps had non-finite loss or gradients (step {step}); "
          f"updates were skipped, {where}")


def run(stage: Stage, workdir: str, stop_at: int | None = None) -> dict:
  """Train (or resume) until train.steps, or until `stop_at` steps for a time-boxed run
  (checkpointed like a preemption; run again to continue). Returns the summary, also
  written to <workdir>/summary.json."""
  t0 = time.time()
  config, mesh, rules = stage.config, stage.mesh, stage.rules
  t = config.train
  save_config(workdir, config)
  ckpt = Checkpointer(workdir, t.keep_ckpts, async_save=config.platform != "cpu",
                      layout=stage.layout)
  start = 0
  last_saved = ckpt.latest_step()
  if last_saved is None:
    state, shardings = stage.create_state()
  else:  # restore straight into the sharded layout; no throw-away initialisation
    abstract = stage.abstract_state()
    shardings = sharding.state_shardings(abstract, mesh, rules)
    state, meta = ckpt.restore(abstract, shardings, stage.iterator)
    start = int(meta["step"])
  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, rules, mesh))
  step_fn = stage.make_step(shardings, batch_sharding)

  logger = Logger(workdir)
  preempt = Preemption()
  bar = progress_bar(t.steps, start)
  stage.begin(state, start, logger)
  step = start
  end = t.steps if stop_at is None else min(stop_at, t.steps)
  try:
    while step < end:
      batch = stage.device_batch(next(stage.iterator), batch_sharding)
      with sharding.use_mesh(mesh, rules):
        state, metrics = step_fn(state, batch, step)
      step += 1
      bar.update(1)
      if step % t.log_every == 0 or step == end:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        logger.scalars(step, {f"train/{k}": v for k, v in host.items()} | stage.log_extras())
        bar.set_postfix(**stage.on_log(host))
        nonfinite = int(state.nonfinite)
        if nonfinite >= t.nan_patience:
          raise FloatingPointError(_nonfinite_message(nonfinite, step, last_saved))
      if step != end:
        stage.periodic(state, step, logger)
      if step % t.ckpt_every == 0 or preempt.requested or step == end:
        ckpt.save(step, state, stage.iterator, stage.checkpoint_meta())
        last_saved = step
      if preempt.requested:
        print(f"SIGTERM: checkpoint written at step {step}, exiting", file=sys.stderr)
        break
  finally:
    bar.close()
  if not preempt.requested:
    stage.finish(state, step, logger)
  ckpt.close()
  summary = {"workdir": os.path.abspath(workdir), "start_step": start, "steps": step,
             **stage.summary(state, step, workdir), "skipped_steps": int(state.skipped),
             "preempted": preempt.requested, "seconds": round(time.time() - t0, 1)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  logger.close()
  return summary
