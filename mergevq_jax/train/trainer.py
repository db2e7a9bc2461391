"""Stage-1 training loop: data -> sharded jitted step -> logs, images, checkpoints.

`train(config, workdir)` runs (or resumes) a run and returns its summary dict, which is
also written to <workdir>/summary.json. Everything that can be checked before
compiling is checked first (data, weight files, batch divisibility, K candidates).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from mergevq_jax import config_base, host_memory, sharding
from mergevq_jax.models import lfq
from mergevq_jax.pretrained import save_config
from mergevq_jax.train import losses
from mergevq_jax.train.checkpoint import Checkpointer
from mergevq_jax.train.logger import Logger, image_grid, to_uint8
from mergevq_jax.train.state import abstract_state, create_state, graphs as make_graphs
from mergevq_jax.train.step import Frozen, StepPerK, jit_train_step, make_train_step


def check_train_config(config, mesh) -> None:
  """ValueError naming the key or file, before anything is compiled."""
  config_base.validate_config(config)
  t, lo = config.train, config.loss
  dp = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  if t.batch_size % dp or t.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the {dp} "
                     f"data-parallel devices and the {jax.process_count()} hosts")
  if t.batch_size % t.accum_steps or (t.batch_size // t.accum_steps) % dp:
    raise ValueError(f"train.batch_size={t.batch_size} / train.accum_steps={t.accum_steps} "
                     f"must be a whole multiple of the {dp} data-parallel devices")
  for key in ("lpips_path", "teacher_path"):
    path = lo[key]
    if path and not os.path.isfile(path):
      raise ValueError(f"loss.{key}={path!r}: file not found (set it to '' to switch off)")
  if lo.pixel not in ("l1", "l2"):
    raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {lo.pixel!r}")
  if t.steps < 1:
    raise ValueError(f"train.steps must be positive, got {t.steps}")


def sample_num_keep(config, step: int) -> int:
  """K for a step: drawn from model.keep_candidates with model.keep_probs, a pure
  function of (seed, step) so that resumed runs draw the same sequence."""
  m = config.model
  if not m.keep_candidates:
    return m.num_keep
  rng = np.random.default_rng([config.seed, step])
  return int(rng.choice(np.asarray(m.keep_candidates), p=np.asarray(m.keep_probs)))


def load_frozen(config) -> tuple[Frozen, Frozen]:
  """(graphdefs, states) of the frozen networks that are switched on."""
  lo = config.loss
  graphdefs, states = {}, {}
  if lo.lpips_path and lo.lpips_weight:
    from mergevq_jax.nets.vgg_lpips import load_lpips
    graphdefs["lpips"], states["lpips"] = nnx.split(load_lpips(lo.lpips_path))
  if lo.teacher_path and lo.align_weight:
    from mergevq_jax.nets.dinov2 import load_dinov2
    graphdefs["teacher"], states["teacher"] = nnx.split(
        load_dinov2(lo.teacher_path, image_size=config.data.align_size))
  return Frozen(**graphdefs), Frozen(**states)


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
  try:
    from tqdm import tqdm
  except ImportError:
    return None
  quiet = jax.process_index() != 0 or not sys.stderr.isatty()
  return tqdm(total=total, initial=initial, disable=quiet, unit="step", dynamic_ncols=True)


def evaluate(recon_fn, params, images, eval_keeps) -> dict:
  """PSNR per K and code statistics on a fixed batch; also returns reconstructions."""
  out = {"recon": {}}
  counts = None
  for k in eval_keeps:
    recon, enc = recon_fn(params, images, num_keep=k)
    out[f"psnr_k{k}"] = float(losses.psnr(recon, images))
    out["recon"][k] = np.asarray(recon)
    hist = lfq.code_histogram(enc.indices, enc.tokens.shape[-1])
    counts = hist if counts is None else counts + hist
  out["codebook_usage"] = float(lfq.codebook_usage(counts))
  out["codes_seen"] = int(jnp.sum(counts > 0))
  out["perplexity"] = float(lfq.perplexity(counts))
  return out


def train(config, workdir: str, stop_at: int | None = None) -> dict:
  """Train (or resume) until train.steps, or until `stop_at` steps for a time-boxed run
  (checkpointed like a preemption; run again to continue)."""
  t0 = time.time()
  mesh = sharding.mesh_from_config(config)
  check_train_config(config, mesh)
  from mergevq_jax.data.pipeline import make_eval_batch, make_train_iterator

  t = config.train
  rules = sharding.rules_from_config(config)
  save_config(workdir, config)
  graphs = make_graphs(config)
  frozen_graphs, frozen = load_frozen(config)
  if frozen.teacher is not None and not config.data.align_views:
    raise ValueError("the alignment loss needs data.align_views=True (weak/strong views)")

  iterator = make_train_iterator(config, seed=config.seed)
  eval_images = jnp.asarray(make_eval_batch(config, config.data.eval_images))
  ckpt = Checkpointer(workdir, t.keep_ckpts, async_save=config.platform != "cpu")
  start = 0
  if ckpt.latest_step() is None:
    state, shardings = create_state(config, mesh, rules)
  else:  # restore straight into the sharded layout; no throw-away initialisation
    abstract = abstract_state(config)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    state, meta = ckpt.restore(abstract, shardings, iterator)
    start = int(meta["step"])

  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, rules, mesh))
  frozen_shardings = sharding.state_shardings(frozen, mesh, rules)
  frozen = jax.device_put(frozen, frozen_shardings)
  step_fn = StepPerK(jit_train_step(make_train_step(config, graphs, frozen_graphs), shardings,
                                    batch_sharding, frozen_shardings, mesh))
  host_memory.release_free_memory()  # initialisation / restore scratch
  tok_graph = graphs.tokenizer

  recon_fn = jax.jit(lambda p, x, num_keep: nnx.merge(tok_graph, p).reconstruct(x, num_keep),
                     static_argnames=("num_keep",))
  candidates = sorted(set(config.model.keep_candidates)) or [config.model.num_keep]
  eval_keeps = sorted({min(candidates), config.model.num_keep})

  logger = Logger(workdir)
  preempt = Preemption()
  bar = progress_bar(t.steps, start)
  summary = {"workdir": os.path.abspath(workdir), "start_step": start}
  first_eval = None
  last_eval = None
  keeps_used: set[int] = set()

  def put(batch):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items() if k != "label"}

  def run_eval(step):
    nonlocal first_eval, last_eval
    with sharding.use_mesh(mesh, rules):
      res = evaluate(recon_fn, state.params, eval_images, eval_keeps)
      ema = evaluate(recon_fn, state.ema, eval_images, eval_keeps[-1:])
    scalars = {k: v for k, v in res.items() if k != "recon"}
    scalars[f"ema_psnr_k{eval_keeps[-1]}"] = ema[f"psnr_k{eval_keeps[-1]}"]
    logger.scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
    rows = [to_uint8(eval_images)] + [to_uint8(res["recon"][k]) for k in eval_keeps]
    labels = ["original"] + [f"K={k}" for k in eval_keeps]
    logger.image(step, "reconstructions", image_grid(rows, labels))
    first_eval = first_eval or scalars
    last_eval = scalars
    return scalars

  if start == 0:
    run_eval(0)
  step = start
  metrics = None
  end = t.steps if stop_at is None else min(stop_at, t.steps)
  try:
    while step < end:
      num_keep = sample_num_keep(config, step)
      keeps_used.add(num_keep)
      with sharding.use_mesh(mesh, rules):
        state, metrics = step_fn(state, put(next(iterator)), frozen, num_keep)
      step += 1
      if bar is not None:
        bar.update(1)
      if step % t.log_every == 0 or step == t.steps:
        host = jax.device_get(metrics)
        logger.scalars(step, {f"train/{k}": v for k, v in host.items()} | {
            "train/num_keep": num_keep, "train/compiled_k": step_fn.num_compiled})
        if bar is not None:
          bar.set_postfix(loss=f"{host['g_total']:.3f}", psnr=f"{host['psnr']:.2f}", K=num_keep)
        nonfinite = int(state.nonfinite)
        if nonfinite >= t.nan_patience:
          raise FloatingPointError(
              f"{nonfinite} consecutive steps had non-finite loss or gradients (step {step}); "
              f"updates were skipped, last good state is in the last checkpoint")
      if step % t.eval_every == 0 and step != t.steps:
        run_eval(step)
      if step % t.ckpt_every == 0 or preempt.requested or step == end:
        ckpt.save(step, state, iterator, {"num_keep_values": sorted(keeps_used)})
      if preempt.requested:
        print(f"SIGTERM: checkpoint written at step {step}, exiting", file=sys.stderr)
        break
  finally:
    if bar is not None:
      bar.close()
  if not preempt.requested:
    run_eval(step)
  ckpt.close()
  k = eval_keeps[-1]
  summary.update({
      "steps": step,
      "psnr_first_eval": None if first_eval is None else first_eval[f"psnr_k{k}"],
      "psnr_last_eval": last_eval[f"psnr_k{k}"] if last_eval else None,
      "psnr_last_eval_per_k": {kk: last_eval[f"psnr_k{kk}"] for kk in eval_keeps}
      if last_eval else None,
      "ema_psnr_last_eval": last_eval.get(f"ema_psnr_k{k}") if last_eval else None,
      "codebook_usage": last_eval["codebook_usage"] if last_eval else None,
      "codes_seen": last_eval["codes_seen"] if last_eval else None,
      "perplexity": last_eval["perplexity"] if last_eval else None,
      "num_keep_values": sorted(keeps_used),
      "compiled_steps": step_fn.num_compiled,
      "skipped_steps": int(state.skipped),
      "preempted": preempt.requested,
      "seconds": round(time.time() - t0, 1),
  })
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  logger.close()
  return summary
