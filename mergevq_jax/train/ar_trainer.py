"""MergeAR (stage 2) training loop: code dataset -> sharded jitted step -> logs, sample
grids, checkpoints. Same machinery as stage 1 (grain iterator, orbax checkpoints with the
iterator state, JSONL + TensorBoard logger, SIGTERM handling, progress bar).

`train(config, workdir)` runs (or resumes) a run and returns its summary, also written to
<workdir>/summary.json. Every `train.sample_every` steps (and at the end) it samples
`sample.num_classes_shown` classes at each K of the dataset and writes samples.png, when
the tokenizer recorded in the codes manifest is available.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from mergevq_jax import config_mergear, sharding
from mergevq_jax.data import codes as codes_lib
from mergevq_jax.pretrained import save_config
from mergevq_jax.train import ar_step
from mergevq_jax.train.checkpoint import MERGEAR_LAYOUT_VERSION, Checkpointer
from mergevq_jax.train.logger import Logger, image_grid, to_uint8
from mergevq_jax.train.trainer import Preemption, progress_bar


def check_codes(config, dataset: codes_lib.CodeDataset) -> None:
  """ValueError if the codes dataset does not fit the model config."""
  m, man = config.model, dataset.manifest
  where = f"codes dataset {dataset.directory!r}"
  if tuple(man["grid"]) != tuple(m.grid):
    raise ValueError(f"{where} has a {tuple(man['grid'])} code grid; model.grid="
                     f"{tuple(m.grid)}")
  if int(man["code_bits"]) != m.code_bits:
    raise ValueError(f"{where} has {man['code_bits']}-bit codes; model.code_bits={m.code_bits}")
  missing = sorted(set(int(k) for k in np.unique(dataset.column("keep"))) - set(m.keep_values))
  if missing:
    raise ValueError(f"{where} has sequences with K={missing}, not in model.keep_values="
                     f"{tuple(m.keep_values)}")
  labels = dataset.column("label")
  if labels.min() < 0 or labels.max() >= m.num_classes:
    raise ValueError(f"{where} has labels in [{labels.min()}, {labels.max()}]; "
                     f"model.num_classes={m.num_classes}")


def check_train_config(config, mesh) -> codes_lib.CodeDataset:
  config_mergear.validate_mergear_config(config)
  t = config.train
  dp = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  if t.batch_size % dp or t.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the {dp} "
                     f"data-parallel devices and the {jax.process_count()} hosts")
  if t.steps < 1:
    raise ValueError(f"train.steps must be positive, got {t.steps}")
  if not config.data.codes_dir:
    raise ValueError("data.codes_dir is required (create one with `python -m mergevq_jax.tokenize`)")
  dataset = codes_lib.CodeDataset(config.data.codes_dir)
  check_codes(config, dataset)
  return dataset


class SampleGrid:
  """Samples of a few classes at each K of the data, decoded by the data's tokenizer."""

  def __init__(self, config, dataset: codes_lib.CodeDataset):
    from mergevq_jax import pretrained
    from mergevq_jax.models.mergear import MergeAR
    from mergevq_jax.models.mergear_decode import Generator
    from mergevq_jax.generation import check_pair, code_decoder
    from flax import nnx
    self.tokenizer, _, _ = pretrained.load_tokenizer(dataset.manifest["tokenizer_workdir"])
    check_pair(config, self.tokenizer)
    self.decode = code_decoder(self.tokenizer)
    self.generator = Generator(nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0))))
    s = config.sample
    self.sampling = dict(keep_cap=s.keep_cap, temperature=s.temperature, top_k=s.top_k,
                         top_p=s.top_p, cfg_scale=s.cfg_scale)
    keeps = sorted(set(int(k) for k in dataset.manifest["keep_values"]))
    self.keeps = keeps if len(keeps) <= 3 else [keeps[0], keeps[len(keeps) // 2], keeps[-1]]
    labels = dataset.column("label")
    self.classes = [int(c) for c in np.unique(labels)[:s.num_classes_shown]]
    # A data row: the tokenizer's decoding of one training sequence per class.
    first = [int(np.flatnonzero(labels == c)[0]) for c in self.classes]
    self.data_images = np.asarray(self.decode(np.stack([dataset[i]["codes"] for i in first])))
    self.seed = config.seed

  def __call__(self, params, step: int) -> tuple[np.ndarray, dict]:
    from mergevq_jax.generation import sample_images
    self.generator.state = params
    rows, labels, kept, overflow = [to_uint8(self.data_images)], ["data"], [], []
    for k in self.keeps:
      key = jax.random.fold_in(jax.random.key(self.seed), step * 1000 + k)
      images, _, stats = sample_images(self.generator, self.decode, key, self.classes, k,
                                       **self.sampling)
      rows.append(to_uint8(images[0]))
      labels.append(f"K={k}")
      kept.append(float(stats["kept_slots_used"].mean()))
      overflow.append(float(stats["overflow"].mean()))
    return image_grid(rows, labels), {"sample/kept_slots_used": float(np.mean(kept)),
                                      "sample/overflow": float(np.mean(overflow))}


def train(config, workdir: str, stop_at: int | None = None) -> dict:
  """Train (or resume) MergeAR until train.steps (or `stop_at`, checkpointed)."""
  t0 = time.time()
  mesh = sharding.mesh_from_config(config)
  dataset = check_train_config(config, mesh)
  from mergevq_jax.data.pipeline import iterate, process_layout, shuffled_batches
  t = config.train
  rules = sharding.rules_from_config(config)
  save_config(workdir, config)
  pi, pc = process_layout(None, None)
  iterator = iterate(shuffled_batches(dataset, t.batch_size // pc, seed=config.seed,
                                      process_index=pi, process_count=pc))
  ckpt = Checkpointer(workdir, t.keep_ckpts, async_save=config.platform != "cpu",
                      layout=MERGEAR_LAYOUT_VERSION)
  start = 0
  if ckpt.latest_step() is None:
    state, shardings = ar_step.create_state(config, mesh, rules)
  else:
    abstract = ar_step.abstract_state(config)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    state, meta = ckpt.restore(abstract, shardings, iterator)
    start = int(meta["step"])
  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, rules, mesh))
  step_fn = ar_step.jit_train_step(ar_step.make_train_step(config, ar_step.graphdef(config)),
                                   shardings, batch_sharding, mesh)
  sampler = None
  if t.sample_every and dataset.manifest.get("tokenizer_workdir"):
    try:
      sampler = SampleGrid(config, dataset)
    except (ValueError, OSError) as e:
      logging.warning("no sample grids: %s", e)
      print(f"warning: no sample grids ({e})", file=sys.stderr)

  logger = Logger(workdir)
  preempt = Preemption()
  bar = progress_bar(t.steps, start)
  first_loss = last = None
  sample_stats = {}

  def put(batch):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v, np.int32))
            for k, v in batch.items()}

  def run_samples(step):
    nonlocal sample_stats
    params = state.ema if t.ema_decay > 0 else state.params
    grid, sample_stats = sampler(params, step)
    logger.image(step, "samples", grid)
    logger.scalars(step, sample_stats)

  step = start
  end = t.steps if stop_at is None else min(stop_at, t.steps)
  try:
    while step < end:
      with sharding.use_mesh(mesh, rules):
        state, metrics = step_fn(state, put(next(iterator)))
      step += 1
      if bar is not None:
        bar.update(1)
      if step % t.log_every == 0 or step == end:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        first_loss = first_loss if first_loss is not None else last["loss"]
        logger.scalars(step, {f"train/{k}": v for k, v in last.items()})
        if bar is not None:
          bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['acc']:.3f}")
        if int(state.nonfinite) >= t.nan_patience:
          raise FloatingPointError(
              f"{int(state.nonfinite)} consecutive steps had non-finite loss or gradients "
              f"(step {step}); the last good state is in the last checkpoint")
      if sampler is not None and step % t.sample_every == 0 and step != end:
        run_samples(step)
      if step % t.ckpt_every == 0 or preempt.requested or step == end:
        ckpt.save(step, state, iterator)
      if preempt.requested:
        print(f"SIGTERM: checkpoint written at step {step}, exiting", file=sys.stderr)
        break
  finally:
    if bar is not None:
      bar.close()
  if sampler is not None and not preempt.requested:
    run_samples(step)
  ckpt.close()
  summary = {
      "workdir": os.path.abspath(workdir), "start_step": start, "steps": step,
      "loss_first_log": first_loss, "loss_last_log": last["loss"] if last else None,
      "acc_last_log": last["acc"] if last else None, "sequences": len(dataset),
      "samples_png": (os.path.join(os.path.abspath(workdir), "samples.png")
                      if sampler is not None else None),
      **sample_stats, "skipped_steps": int(state.skipped), "preempted": preempt.requested,
      "seconds": round(time.time() - t0, 1)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  logger.close()
  return summary
