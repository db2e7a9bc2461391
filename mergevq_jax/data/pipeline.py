"""grain input pipelines: the training iterator (this process's slice of each global
batch, from any global batch on) and a fixed evaluation batch.

    source -> shuffle(seed) -> repeat (reshuffled each epoch) -> random_map(TrainAugment,
    seed)   = the global stream, the same on every process
    -> this process's rows of each global batch -> batch(per-process batch)
    -> to_iter_dataset (+ mp_prefetch with data.num_workers worker processes)

Global batch j is the stream's elements [j*B, (j+1)*B), a pure function of (seed, source,
j), whatever the number of processes or workers; process p of P loads (decodes and
augments) only its rows [p*B/P, (p+1)*B/P) of it, and the trainer assembles the global
array with `jax.make_array_from_process_local_data`. So a run on 2 hosts sees exactly the
batches of a run on 1. A resumed run therefore needs no stored iterator state: the
trainer starts the stream at global batch `step` (`iterate(ds, start=step)`), which is
right for any number of processes or worker processes, also when they changed since the
checkpoint was written (grain's own iterator state is per process and per worker).
"""
from __future__ import annotations

import os

import grain
import numpy as np

from mergevq_jax.data import augment as augment_lib
from mergevq_jax.data import sources as sources_lib

# Threads that build batches in each process (one batch per thread at a time) and batches
# kept ready ahead of the trainer. A batch of 256 images with align views is ~0.5 GB of
# float32, so the read-ahead stays small.
MAX_READ_THREADS = 8


def process_layout(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_index, process_count = int(process_index), int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count})")
  return process_index, process_count


def per_process_batch_size(global_batch: int, process_count: int) -> int:
  """train.batch_size split over processes; ValueError if it does not divide evenly."""
  global_batch = int(global_batch)
  if global_batch <= 0:
    raise ValueError(f"train.batch_size must be positive, got {global_batch}")
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} is not divisible by the number of "
                     f"processes ({process_count}); each process loads an equal slice")
  return global_batch // process_count


def _read_options(num_workers: int) -> grain.ReadOptions:
  cpus = os.cpu_count() or 1
  threads = max(1, min(MAX_READ_THREADS, cpus // max(1, num_workers)))
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags (grain_enable_multiprocess_worker_profiling);
  outside `absl.app.run` (pytest, notebooks) nothing parsed them and grain would raise
  UnparsedFlagAccessError, so accept the defaults. Under app.run this does nothing."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_dataset(config, *, seed: int, process_index=None, process_count=None,
                       source=None) -> grain.MapDataset:
  """The infinite MapDataset of per-process training batches (see module docstring).
  `source` overrides `source_from_config(config)` (any object with __len__/__getitem__)."""
  process_index, process_count = process_layout(process_index, process_count)
  num_workers = int(config.data.num_workers)
  if num_workers < 0:
    raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
  transform = augment_lib.TrainAugment.from_config(config)   # validates the view settings
  source = sources_lib.source_from_config(config) if source is None else source
  return shuffled_batches(source, config.train.batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          transform=transform)


class _ProcessRows:
  """Element k of process p's stream: row p*b + k % b of global batch k // b (b = B/P)."""

  def __init__(self, stream, global_batch: int, process_index: int, process_count: int):
    self.stream, self.global_batch = stream, global_batch
    self.local = global_batch // process_count
    self.offset = process_index * self.local

  def __len__(self) -> int:
    return len(self.stream) // self.global_batch * self.local

  def __getitem__(self, k: int):
    j, row = divmod(int(k), self.local)
    return self.stream[j * self.global_batch + self.offset + row]


def shuffled_batches(source, global_batch: int, *, seed: int, process_index: int,
                     process_count: int, transform=None) -> grain.MapDataset:
  """This process's rows of each global batch of `source` (shuffled, reshuffled every
  epoch, repeated forever, optionally mapped by a grain RandomMapTransform)."""
  batch = per_process_batch_size(global_batch, process_count)
  shuffle_seed, augment_seed = (int(s) for s in
                                np.random.SeedSequence([int(seed)]).generate_state(2))
  stream = grain.MapDataset.source(source).shuffle(seed=shuffle_seed).repeat()
  if transform is not None:
    stream = stream.random_map(transform, seed=augment_seed)
  mine = grain.MapDataset.source(_ProcessRows(stream, global_batch, process_index,
                                              process_count))
  return mine.batch(batch, drop_remainder=True)


def iterate(ds: grain.MapDataset, num_workers: int = 0, start: int = 0) -> grain.DatasetIterator:
  """Iterator over a MapDataset from element `start` on, with `num_workers` worker
  processes."""
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  it_ds = (ds[start:] if start else ds).to_iter_dataset(_read_options(num_workers))
  if num_workers > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def make_train_iterator(config, *, seed: int, start: int = 0, process_index=None,
                        process_count=None, source=None) -> grain.DatasetIterator:
  """Iterator over this process's training batches from global batch `start` on:
  {'image': (b, H, W, 3) float32 in [-1, 1], 'label': (b,) int32} plus, when
  `data.align_views`, 'weak' (ImageNet-normalised) and 'strong' ([-1, 1]) of shape
  (b, align_size, align_size, 3), where b = train.batch_size / process_count.
  process_index / process_count default to jax.process_index() / jax.process_count()."""
  ds = make_train_dataset(config, seed=seed, process_index=process_index,
                          process_count=process_count, source=source)
  return iterate(ds, int(config.data.num_workers), start)


def eval_indices(length: int, n: int) -> np.ndarray:
  """n evenly spread indices (every class of a sorted folder shows up); wraps if n > length."""
  if n <= length:
    return np.linspace(0, length - 1, n).round().astype(np.int64) if n > 1 else np.zeros(
        n, np.int64)
  return np.arange(n) % length


def make_eval_batch(config, n: int | None = None, *, source=None,
                    with_labels: bool = False):
  """Fixed (n, H, W, 3) float32 batch in [-1, 1] of eval views (shorter side -> image_size,
  center crop) for PSNR and reconstruction grids; n defaults to data.eval_images. Always
  the same images (evenly spread over the eval split). with_labels=True also returns the
  (n,) int32 labels."""
  n = int(config.data.eval_images if n is None else n)
  if n <= 0:
    raise ValueError(f"make_eval_batch needs n > 0, got {n}")
  source = sources_lib.source_from_config(config, train=False) if source is None else source
  view = augment_lib.EvalAugment(config.model.image_size)
  items = [view(source[int(i)]) for i in eval_indices(len(source), n)]
  images = np.stack([x["image"] for x in items])
  if with_labels:
    return images, np.asarray([x["label"] for x in items], np.int32)
  return images
