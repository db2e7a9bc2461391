"""From MergeAR codes to pictures: decode generated code sequences with the tokenizer and
sample labelled batches (used by the sampling CLI and the stage-2 trainer's grids)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.models import lfq


def code_decoder(tokenizer):
  """Jitted codes (B, L) int32 -> images (B, H, W, 3) in [-1, 1] through `tokenizer`."""
  graphdef, state = nnx.split(tokenizer)
  d = tokenizer.config.model.z_channels

  @jax.jit
  def decode(state, codes):
    tok = nnx.merge(graphdef, state)
    bits = lfq.indices_to_bits(codes, d)
    return tok.decoder(bits.reshape(codes.shape[0], *tok.grid, d))

  return lambda codes: decode(state, jnp.asarray(codes, jnp.int32))


def check_pair(ar_config, tokenizer) -> None:
  """ValueError unless the MergeAR's code grid and bits match the tokenizer."""
  m = ar_config.model
  if tuple(m.grid) != tuple(tokenizer.grid) or m.code_bits != tokenizer.config.model.z_channels:
    raise ValueError(f"MergeAR predicts a {tuple(m.grid)} grid of {m.code_bits}-bit codes; "
                     f"the tokenizer decodes {tuple(tokenizer.grid)} x "
                     f"{tokenizer.config.model.z_channels} bits")


def sample_images(generator, decode, key, classes, num_keep: int, per_class: int = 1,
                  **sampling) -> tuple[np.ndarray, np.ndarray, dict]:
  """Generate per_class samples of each class. Returns images (per_class, n, H, W, 3)
  uint8-ready floats, codes (per_class, n, L) and stats arrays of the same leading shape."""
  ids = np.tile(np.asarray(classes, np.int32), per_class)
  codes, stats = generator(key, ids, num_keep, **sampling)
  images = np.asarray(decode(codes))
  n = len(classes)
  shape = lambda a: np.asarray(a).reshape(per_class, n, *np.shape(a)[1:])
  stats = {"kept_slots_used": shape(stats.kept_slots_used), "overflow": shape(stats.overflow),
           "distinct_codes": shape([len(set(row)) for row in np.asarray(codes).tolist()])}
  return shape(images), shape(codes), stats


def default_num_keep(model, tok_config) -> int:
  """MergeAR's default merge instruction: the tokenizer's num_keep when MergeAR knows it,
  else MergeAR's middle K."""
  k = int(tok_config.model.num_keep)
  return k if k in model.keep_values else model.keep_values[len(model.keep_values) // 2]


def tokenizer_workdir_of(ar_config) -> str:
  from mergevq_jax.data.codes import read_manifest
  if not ar_config.data.codes_dir:
    raise ValueError("--tokenizer_workdir is required (the MergeAR run names no codes_dir)")
  workdir = read_manifest(ar_config.data.codes_dir).get("tokenizer_workdir")
  if not workdir:
    raise ValueError(f"{ar_config.data.codes_dir}/manifest.json records no tokenizer_workdir; "
                     f"pass --tokenizer_workdir")
  return workdir
