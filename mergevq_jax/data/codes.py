"""On-disk code datasets for stage 2: what `python -m mergevq_jax.tokenize` writes and the
MergeAR trainer reads.

Layout of a codes directory:
  manifest.json                       geometry, K values, classes, the tokenizer it came from
  shard-<p>-of-<n>.codes.npy          (N_p, L) int32 codes in raster order (one per position:
                                      the code of the merged token that owns it)
  shard-<p>-of-<n>.keep.npy           (N_p,) int32 K (merge instruction) of each sequence
  shard-<p>-of-<n>.label.npy          (N_p,) int32 class label
  shard-<p>-of-<n>.item.npy           (N_p,) int32 place of the sequence in the dataset
                                      (view * images + image)
Each process writes its own shard (each file complete or absent); readers memory-map
every local shard, so the dataset never has to fit in RAM (shards in an object store,
gs://..., are read into memory), and order the rows by
`item`: the dataset is the same whatever number of processes wrote it (so are the
batches a MergeAR run draws from it).
"""
from __future__ import annotations

import numpy as np

from mergevq_jax import files

FORMAT = "mergevq_jax.codes.v2"   # v2: + item
ARRAYS = ("codes", "keep", "label", "item")


def shard_prefix(directory: str, process_index: int, process_count: int) -> str:
  return files.join(directory, f"shard-{process_index:05d}-of-{process_count:05d}")


def write_shard(directory: str, process_index: int, process_count: int, codes: np.ndarray,
                keep: np.ndarray, label: np.ndarray, item: np.ndarray) -> str:
  """Write one process's arrays, each file atomically. Returns the prefix."""
  n = len(codes)
  if codes.ndim != 2 or keep.shape != (n,) or label.shape != (n,) or item.shape != (n,):
    raise ValueError(f"codes (N, L), keep, label and item (N,) expected, got {codes.shape}, "
                     f"{keep.shape}, {label.shape}, {item.shape}")
  prefix = shard_prefix(directory, process_index, process_count)
  for name, array in zip(ARRAYS, (codes, keep, label, item)):
    files.save_npy(f"{prefix}.{name}.npy", np.asarray(array, np.int32))
  return prefix


def write_manifest(directory: str, manifest: dict) -> None:
  files.write_json(files.join(directory, "manifest.json"), {"format": FORMAT, **manifest})


def read_manifest(directory: str) -> dict:
  path = files.path(directory) / "manifest.json"
  if not path.is_file():
    raise ValueError(f"{directory!r} is not a codes directory (no manifest.json); create one "
                     f"with `python -m mergevq_jax.tokenize`")
  manifest = files.read_json(path)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, this code reads {FORMAT!r}")
  return manifest


class CodeDataset:
  """All shards of a codes directory as one random-access source:
  `ds[i] -> {'codes': (L,) int32, 'keep': int, 'label': int}`."""

  def __init__(self, directory: str):
    self.directory = directory
    self.manifest = read_manifest(directory)
    prefixes = sorted(files.join(directory, p.name[:-len(".codes.npy")])
                      for p in files.path(directory).iterdir()
                      if p.name.startswith("shard-") and p.name.endswith(".codes.npy"))
    if not prefixes:
      raise ValueError(f"{directory!r}: manifest.json but no shard-*.codes.npy files")
    parts = {name: [files.load_npy(f"{p}.{name}.npy") for p in prefixes]
             for name in ARRAYS}
    self.num_positions = int(self.manifest["num_positions"])
    for p, codes in zip(prefixes, parts["codes"]):
      if codes.ndim != 2 or codes.shape[1] != self.num_positions:
        raise ValueError(f"{p}.codes.npy has shape {codes.shape}; the manifest says "
                         f"L={self.num_positions}")
    self._parts = parts
    self._offsets = np.cumsum([0] + [len(c) for c in parts["codes"]])
    self._rows = np.argsort(np.concatenate([np.asarray(a) for a in parts["item"]]),
                            kind="stable")   # dataset index -> row over the shards

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(index)
    index = int(self._rows[index])
    part = int(np.searchsorted(self._offsets, index, side="right") - 1)
    i = index - int(self._offsets[part])
    return {"codes": np.asarray(self._parts["codes"][part][i], np.int32),
            "keep": int(self._parts["keep"][part][i]),
            "label": int(self._parts["label"][part][i])}

  def column(self, name: str) -> np.ndarray:
    """One array over all shards in dataset order, e.g. column('keep') (N,)."""
    return np.concatenate([np.asarray(a) for a in self._parts[name]])[self._rows]
