"""The one training loop every stage runs: the run directory's lock and resume check,
restore-or-init, the step loop with progress, logs, divergence stop, periodic hooks and
checkpoints, the save on SIGTERM / Ctrl-C, summary.json.

A stage (`tokenizer_trainer.TokenizerStage`, `ar_trainer.ARStage`) is a `Stage`: it
checks its config and data before anything is compiled, says how to build, restore and
step its train state, and adds its own periodic work (reconstructions, sample grids)
and summary entries. `run(StageClass, config, workdir)` does the rest.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding

from mergevq_jax import files, run_dir, sharding
from mergevq_jax.checkpoint import Checkpointer
from mergevq_jax.data.pipeline import iterate
from mergevq_jax.progress import Progress
from mergevq_jax.train.logger import Logger


class Interrupts:
  """`with Interrupts() as stop:` -- SIGTERM (preemption) and SIGINT (Ctrl-C) set
  `stop.signal` so the loop checkpoints at the next step boundary and ends; a second Ctrl-C
  stops at once (KeyboardInterrupt). The previous handlers come back on exit.

  With several processes the handlers stay off: JAX's preemption service (started by
  `jax.distributed.initialize`) takes SIGTERM on any host and agrees a step with all
  of them, which the loop reads through `Checkpointer.reached_preemption`; a save on one
  host alone would hang the others.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: str | None = None
    self.previous = {}

  def __enter__(self) -> "Interrupts":
    if jax.process_count() > 1:
      return self
    try:
      self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not in the main thread: no handlers
      self.previous = {}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self.previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal == "SIGINT" and name == "SIGINT":
      raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
    if self.signal is None:
      self.signal = name
      again = " (Ctrl-C again to stop at once, without saving)" if name == "SIGINT" else ""
      print(f"\n{name}: saving a checkpoint after this step, then stopping{again}",
            file=sys.stderr, flush=True)


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
  compiling and set `train_data` (the grain MapDataset of this process's host batches,
  one per step: `run` iterates it from the restored step on)."""

  layout: str
  train_data: Any

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

  def check_checkpoint(self, meta: dict) -> None:
    """ValueError when the checkpoint to resume (its `meta` item) was made from other
    inputs than this run has (e.g. codes of another tokenizer step)."""

  def summary(self, state, step: int, workdir: str) -> dict:
    """Stage entries of summary.json."""
    return {}


def _nonfinite_message(nonfinite: int, step: int, last_saved: int | None) -> str:
  first = step - nonfinite + 1
  if last_saved is None:
    where = "no checkpoint was written before them"
  elif last_saved < first:
    where = f"the latest checkpoint (step {last_saved}) was written before them"
  else:
    where = (f"the latest checkpoint (step {last_saved}) holds the weights of step "
             f"{first - 1} (skipped steps change nothing but the counters)")
  return (f"training diverged: steps {first}..{step} ({nonfinite} in a row, "
          f"train.nan_patience) had a non-finite or overflowing loss or gradient norm and "
          f"were skipped; {where}. Lower train.lr or set train.grad_clip")


def _restore(stage: Stage, ckpt: Checkpointer, step: int, workdir: str, changes: dict):
  """(state, shardings, meta) of the checkpoint of `step`, or a ValueError saying why the
  config's train state does not fit it."""
  abstract = stage.abstract_state()
  shardings = sharding.state_shardings(abstract, stage.mesh, stage.rules)
  try:
    state, meta = ckpt.restore(abstract, shardings, step=step)
  except Exception as e:  # noqa: BLE001 -- orbax's errors name neither key nor config
    if isinstance(e, ValueError) and "layout" in str(e):
      raise
    first = str(e).strip().splitlines()[0]
    raise ValueError(
        f"the checkpoint of step {step} in {workdir} does not fit this config's train "
        f"state ({first}); keys changed since the run started: "
        f"{sorted(changes) or 'none'}") from None
  return state, shardings, meta


def run(make_stage: Callable[[Any], Stage], config, workdir: str,
        stop_at: int | None = None) -> dict:
  """Train (or resume) `make_stage(config)` in `workdir` until train.steps, or until
  `stop_at` steps for a time-boxed run (checkpointed like a preemption; run again to
  continue). Returns the summary, also written to <workdir>/summary.json.

  The run directory is locked for the whole run (`run_dir.RunLock`), and a resume is
  checked against the stored config before anything is built or written.
  """
  t0 = time.time()
  t = config.train
  with run_dir.RunLock(workdir):
    ckpt = Checkpointer(workdir, t.keep_ckpts, async_save=config.platform != "cpu",
                        layout=make_stage.layout)
    try:
      last_saved = ckpt.latest_step()
      changes = ({} if last_saved is None else
                 run_dir.check_resumable(workdir, config, last_saved))
      stage = make_stage(config)   # the stage's own checks (data, files) come next
      if last_saved is None:
        state, shardings = stage.create_state()
        start = 0
      else:  # restore straight into the sharded layout; no throw-away initialisation
        stage.check_checkpoint(ckpt.step_and_meta(last_saved)[1])
        state, shardings, meta = _restore(stage, ckpt, last_saved, workdir, changes)
        start = int(meta["step"])
      run_dir.record_start(workdir, config, start, resumed=last_saved is not None)
      return _train(stage, state, shardings, start, ckpt, last_saved, workdir, stop_at, t0)
    finally:
      ckpt.close()


def _train(stage: Stage, state, shardings, start: int, ckpt: Checkpointer,
           last_saved: int | None, workdir: str, stop_at: int | None, t0: float) -> dict:
  """The step loop of `run`, from step `start`; returns the summary."""
  config, mesh, rules = stage.config, stage.mesh, stage.rules
  t = config.train
  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, rules, mesh))
  step_fn = stage.make_step(shardings, batch_sharding)
  logger = Logger(workdir, start)
  # Batch j of the stream is a function of j alone (data/pipeline.py): resume at `start`.
  batches = iterate(stage.train_data, int(config.data.get("num_workers", 0)), start)
  step = start
  end = t.steps if stop_at is None else min(stop_at, t.steps)
  progress = Progress(t.steps, start, unit="step", label="train")
  with Interrupts() as stop:
    try:
      stage.begin(state, start, logger)
      while step < end:
        batch = stage.device_batch(next(batches), batch_sharding)
        with sharding.use_mesh(mesh, rules):
          state, metrics = step_fn(state, batch, step)
        step += 1
        if step % t.log_every == 0 or step == end:
          host = {k: float(v) for k, v in jax.device_get(metrics).items()}
          logger.scalars(step, {f"train/{k}": v for k, v in host.items()} | stage.log_extras())
          progress.set_postfix(**stage.on_log(host))
          nonfinite = int(state.nonfinite)
          if nonfinite >= t.nan_patience:
            raise FloatingPointError(_nonfinite_message(nonfinite, step, last_saved))
        progress.update(1)
        if stop.signal is None and ckpt.reached_preemption(step):   # multi-host agreement
          stop.signal = "SIGTERM"
        if step != end and stop.signal is None:
          stage.periodic(state, step, logger)
        if step % t.ckpt_every == 0 or stop.signal or step == end:
          ckpt.save(step, state, stage.checkpoint_meta())
          last_saved = step
        if stop.signal:
          ckpt.wait()
          print(f"{stop.signal}: checkpoint written at step {step}; run the same command "
                f"again to resume", file=sys.stderr, flush=True)
          break
      if stop.signal is None:
        stage.finish(state, step, logger)
    finally:
      progress.close()
      logger.close()
  summary = {"workdir": files.join(workdir), "start_step": start, "steps": step,
             **stage.summary(state, step, workdir), "skipped_steps": int(state.skipped),
             "preempted": stop.signal is not None, "stopped_by": stop.signal,
             "seconds": round(time.time() - t0, 1)}
  if jax.process_index() == 0:
    files.write_json(files.join(workdir, "summary.json"), summary)
  return summary
