"""Host batches of an evaluation onto a device mesh and back, for any number of processes.

Each process evaluates its own images (`process_slice`), in batches of one fixed size
(`pad_batch` repeats the last image and returns the number of real ones, so every batch
reuses one compiled program). `to_global` makes the per-process batch one global array
split over the mesh's batch axes; `local_rows` reads this process's rows back in order.
Statistics are accumulated per process and summed across processes at the end
(`sum_across_processes`).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from mergevq_jax import sharding


def process_slice(n: int) -> range:
  """Indices 0..n-1 this process evaluates (strided: process p takes p, p + P, ...)."""
  return range(jax.process_index(), n, jax.process_count())


def local_batch_size(mesh: Mesh, per_device: int) -> int:
  """Images per process per batch: `per_device` times this process's share of the batch
  axes' devices."""
  dp = math.prod(mesh.shape[ax] for ax in ("data", "fsdp"))
  return per_device * max(1, dp // jax.process_count())


def per_process(n: int) -> int:
  """The most items any process gets of n (`process_slice`): ceil(n / processes)."""
  return -(-n // jax.process_count())


def num_batches(n: int, batch: int) -> int:
  """Batches every process runs for n items in all: the same count on every process (a
  process with fewer items runs padding batches), since each batch is one global step."""
  return -(-per_process(n) // batch)


def fit_batch(batch: int, n: int, mesh: Mesh) -> int:
  """`batch` (a multiple of this process's share of devices) shrunk to the smallest such
  multiple that holds a process's share of n items (the same on every process): a short
  evaluation computes no padding it does not need."""
  unit = local_batch_size(mesh, 1)
  return min(batch, max(unit, -(-per_process(n) // unit) * unit))


def pad_batch(images: np.ndarray, size: int) -> tuple[np.ndarray, int]:
  """(images padded to `size` rows by repeating the last, number of real rows)."""
  n = images.shape[0]
  if n > size or n == 0:
    raise ValueError(f"a batch of {n} images does not fit batch size {size}")
  if n < size:
    images = np.concatenate([images, np.repeat(images[-1:], size - n, axis=0)])
  return images, n


def to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows -> a global array split over the mesh's batch axes."""
  spec = sharding.logical_to_spec(("batch",) + (None,) * (local.ndim - 1), None,
                                  sharding.DEFAULT_RULES, mesh)
  return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-split global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:   # replicated over the non-batch axes: take each block once
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def sum_across_processes(x: np.ndarray) -> np.ndarray:
  """Sum of a host array over all processes (the array itself with one process)."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def eval_view_batches(source, indices, image_size: int, batch: int,
                      count: int | None = None):
  """`count` batches (default: enough for `indices`) of (images (batch, S, S, 3) float32 in
  [-1, 1] padded, real count, labels) over `source[indices]` as eval views (shorter side
  -> S, centre crop), in order. Batches past the indices hold 0 real images (padding, so
  that every process runs the same number of global steps)."""
  from mergevq_jax.data import augment
  indices = list(indices)
  count = -(-len(indices) // batch) if count is None else count
  filler = int(indices[0]) if indices else 0
  for b in range(count):
    chunk = indices[b * batch:(b + 1) * batch]
    items = [source[int(i)] for i in (chunk or [filler])]
    images = np.stack([augment.eval_view(it["image"], image_size) for it in items])
    labels = np.asarray([it.get("label", -1) for it in items], np.int32)
    padded, _ = pad_batch(images.astype(np.float32), batch)
    yield padded, len(chunk), labels[:len(chunk)]
