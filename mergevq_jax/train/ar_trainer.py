"""Stage-2 training: MergeAR's `Stage` for the training loop (`loop.run`) on a codes
dataset (`python -m mergevq_jax.tokenize`).

`train(config, workdir)` runs (or resumes) a run and returns its summary, also written to
<workdir>/summary.json. Every `train.sample_every` steps (and at the end) it samples
`sample.num_classes_shown` classes at each K of the dataset and writes samples.png, when
the tokenizer recorded in the codes manifest is available.
"""
from __future__ import annotations

import sys

import jax
import numpy as np
from absl import logging

from mergevq_jax import files
from mergevq_jax.checkpoint import MERGEAR_LAYOUT
from mergevq_jax.config.mergear import validate_mergear_config
from mergevq_jax.data import codes as codes_lib
from mergevq_jax.images import image_grid, to_uint8
from mergevq_jax.train import ar_state, ar_step, loop


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
  """ValueError naming the key or file, before anything is compiled; the codes dataset."""
  validate_mergear_config(config)
  loop.check_train_common(config, mesh)
  if not config.data.codes_dir:
    raise ValueError("data.codes_dir is required (create one with `python -m mergevq_jax.tokenize`)")
  dataset = codes_lib.CodeDataset(config.data.codes_dir)
  check_codes(config, dataset)
  return dataset


class SampleGrid:
  """Samples of a few classes at each K of the data, decoded by the data's tokenizer."""

  def __init__(self, config, dataset: codes_lib.CodeDataset):
    from mergevq_jax import pretrained
    from mergevq_jax.models.ar.mergear import MergeAR
    from mergevq_jax.models.ar.decode import Generator
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


class ARStage(loop.Stage):
  """The MergeAR train state on shuffled code batches, sample grids every sample_every."""

  layout = MERGEAR_LAYOUT

  def __init__(self, config):
    super().__init__(config)
    self.dataset = check_train_config(config, self.mesh)
    from mergevq_jax.data.pipeline import process_layout, shuffled_batches
    pi, pc = process_layout(None, None)
    self.train_data = shuffled_batches(self.dataset, config.train.batch_size, seed=config.seed,
                                       process_index=pi, process_count=pc)
    self.sampler = None
    if config.train.sample_every and self.dataset.manifest.get("tokenizer_workdir"):
      try:
        self.sampler = SampleGrid(config, self.dataset)
      except (ValueError, OSError) as e:
        logging.warning("no sample grids: %s", e)
        print(f"warning: no sample grids ({e})", file=sys.stderr)
    self.first_loss = self.last = None
    self.sample_stats = {}

  def create_state(self):
    return ar_state.create_state(self.config, self.mesh, self.rules)

  def abstract_state(self):
    return ar_state.abstract_state(self.config)

  def make_step(self, shardings, batch_sharding):
    jitted = ar_step.jit_train_step(
        ar_step.make_train_step(self.config, ar_state.graphdef(self.config)), shardings,
        batch_sharding, self.mesh)
    return lambda state, batch, index: jitted(state, batch)

  def device_batch(self, batch, batch_sharding):
    return super().device_batch({k: np.asarray(v, np.int32) for k, v in batch.items()},
                                batch_sharding)

  def on_log(self, metrics):
    self.first_loss = self.first_loss if self.first_loss is not None else metrics["loss"]
    self.last = metrics
    return dict(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.3f}")

  def run_samples(self, state, step, logger):
    params = state.ema if self.config.train.ema_decay > 0 else state.params
    grid, self.sample_stats = self.sampler(params, step)
    logger.image(step, "samples", grid)
    logger.scalars(step, self.sample_stats)

  def periodic(self, state, step, logger):
    if self.sampler is not None and step % self.config.train.sample_every == 0:
      self.run_samples(state, step, logger)

  def finish(self, state, step, logger):
    if self.sampler is not None:
      self.run_samples(state, step, logger)

  def checkpoint_meta(self):
    man = self.dataset.manifest
    return {"codes_tokenizer_step": man.get("tokenizer_step"),
            "codes_tokenizer_workdir": man.get("tokenizer_workdir")}

  def check_checkpoint(self, meta):
    had, has = meta.get("codes_tokenizer_step"), self.dataset.manifest.get("tokenizer_step")
    if had is not None and has is not None and had != has:
      raise ValueError(
          f"this MergeAR run was trained on codes of tokenizer step {had}; the codes in "
          f"data.codes_dir={self.config.data.codes_dir} come from step {has}. Train a new "
          f"MergeAR (another --workdir) on them, or point data.codes_dir at step {had}'s codes")

  def summary(self, state, step: int, workdir: str):
    last = self.last
    return {"loss_first_log": self.first_loss, "loss_last_log": last["loss"] if last else None,
            "acc_last_log": last["acc"] if last else None, "sequences": len(self.dataset),
            "samples_png": (files.join(workdir, "samples.png")
                            if self.sampler is not None else None),
            **self.sample_stats}


def train(config, workdir: str, stop_at: int | None = None) -> dict:
  """Train (or resume) MergeAR until train.steps (or `stop_at`, checkpointed)."""
  return loop.run(ARStage, config, workdir, stop_at)
