"""Tokenize images with a trained tokenizer into a code dataset (see `data.codes`).

Each image (each of `views` views: the center crop, then random crops with flips) is
encoded at one merge instruction K, cycling through `keep_values` so every K gets an equal
share; the K codes are expanded to the L raster positions through the source (each
position gets the code of the merged token that owns it). Every process tokenizes its
own slice of the source and writes its own shard.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.data import augment, codes as codes_lib, sources
from mergevq_jax.data.pipeline import process_layout
from mergevq_jax.models.tokenizer import jit_method
from mergevq_jax.progress import Progress


def expand_codes(indices: jax.Array, owner: jax.Array) -> jax.Array:
  """(B, K) code indices + (B, L) owner indices -> (B, L) codes in raster order."""
  return jnp.take_along_axis(indices, owner, axis=1)


def default_keep_values(tok_config) -> tuple[int, ...]:
  m = tok_config.model
  return tuple(sorted(set(int(k) for k in m.keep_candidates))) or (int(m.num_keep),)


def num_classes_of(source) -> int | None:
  classes = getattr(source, "classes", None)
  return len(classes) if classes is not None else (
      len(source) if isinstance(source, sources.SampleImages) else None)


def tokenize_dataset(tokenizer, source, out_dir: str, keep_values, *, views: int = 1,
                     batch_size: int = 64, seed: int = 0, process_index: int | None = None,
                     process_count: int | None = None, extra_manifest: dict | None = None,
                     progress: bool = True) -> dict:
  """Tokenize this process's slice of `source` into `out_dir`; returns the manifest."""
  process_index, process_count = process_layout(process_index, process_count)
  keep_values = tuple(int(k) for k in keep_values)
  if views < 1 or batch_size < 1 or not keep_values:
    raise ValueError(f"views and batch_size must be >= 1 and keep_values non-empty, got "
                     f"{views}, {batch_size}, {keep_values}")
  for k in keep_values:
    tokenizer.schedule(k)   # ValueError if the tokenizer cannot reach this K
  indices = range(process_index, len(source), process_count)
  jobs = [(i, v, keep_values[(i + v) % len(keep_values)]) for v in range(views) for i in indices]
  if not jobs:
    raise ValueError(f"process {process_index} of {process_count} has no images to tokenize "
                     f"(the source has {len(source)})")
  batch_size = min(batch_size, len(jobs))
  size = tokenizer.config.model.image_size
  graphdef, state = nnx.split(tokenizer)
  encode = jit_method(graphdef, "encode")
  out = {name: [] for name in codes_lib.ARRAYS}
  bar = Progress(len(jobs), unit="image", label="tokenize") if progress else None
  for k in keep_values:
    mine = [job for job in jobs if job[2] == k]
    for start in range(0, len(mine), batch_size):
      chunk = mine[start:start + batch_size]
      images, labels = [], []
      for i, v, _ in chunk:
        item = source[i]
        rng = np.random.default_rng([seed, i, v])
        images.append(augment.eval_view(item["image"], size) if v == 0 else
                      augment.main_view(item["image"], rng, size,
                                        tokenizer.config.data.crop_scale))
        labels.append(item["label"])
      n = len(images)
      images += images[-1:] * (batch_size - n)   # one compiled shape per K
      enc = encode(state, jnp.asarray(np.stack(images)), num_keep=k)
      out["codes"].append(np.asarray(expand_codes(enc.indices, enc.owner))[:n])
      out["keep"].append(np.full(len(chunk), k, np.int32))
      out["label"].append(np.asarray(labels, np.int32))
      out["item"].append(np.asarray([v * len(source) + i for i, v, _ in chunk], np.int32))
      if bar is not None:
        bar.set_postfix(K=k)
        bar.update(len(chunk))
  if bar is not None:
    bar.close()
  arrays = {name: np.concatenate(parts) for name, parts in out.items()}
  codes_lib.write_shard(out_dir, process_index, process_count, **arrays)
  m = tokenizer.config.model
  grid = tokenizer.grid
  manifest = {
      "num_positions": grid[0] * grid[1], "grid": list(grid), "code_bits": int(m.z_channels),
      "keep_values": list(keep_values), "views": views, "image_size": size,
      "num_classes": num_classes_of(source) or int(arrays["label"].max()) + 1,
      "process_count": process_count,
      **(extra_manifest or {})}
  if process_index == 0:
    codes_lib.write_manifest(out_dir, manifest)
  return manifest
