"""MergeAR's hyperparameter checks, code geometry, merge instructions and sampling checks,
in pure Python.

Stdlib only (no JAX, no torch): the JAX model (`mergevq_jax.models.ar.mergear` and
`.sampling`, which re-export these names) and the PyTorch port
(`mergevq_jax.export.torch_modules.ar`) both use them. Configs are read by item access
(config["model"]["width"]), so a config may be an ml_collections ConfigDict or the plain
nested dict of a run's config.json.
"""
from __future__ import annotations

import math

from mergevq_jax.models.hparams import DTYPES, is_mapping

PREFIX = 2  # class token, merge-instruction token
ATTENTION_KINDS = ("merge", "causal")
MODEL_KEYS = ("width", "num_layers", "num_heads", "ffn_dim", "norm_eps", "rope_base", "grid",
              "code_bits", "sub_code_bits", "num_classes", "keep_values", "attention",
              "window", "init_std")


def num_positions(m) -> int:
  """L, the code positions of model config `m` (rows x cols of the code grid)."""
  return int(m["grid"][0]) * int(m["grid"][1])


def check_hparams(config) -> None:
  """ValueError naming the first missing key or model hyperparameter that cannot work
  (config.dtype, when given, must be one of `DTYPES`)."""
  if not is_mapping(config) or "model" not in config or not is_mapping(config["model"]):
    raise ValueError("config must be the run's config as a nested dict with a 'model' dict "
                     "(ConfigDict.to_dict(), or config.json of a run directory)")
  dtype = config["dtype"] if "dtype" in config else "float32"
  if dtype not in DTYPES:
    raise ValueError(f"config.dtype must be one of {DTYPES}, got {dtype!r}")
  m = config["model"]
  missing = [k for k in MODEL_KEYS if k not in m]
  if missing:
    raise ValueError(f"config.model lacks {missing} (not a MergeAR config?)")
  if m["width"] % m["num_heads"]:
    raise ValueError(f"model.num_heads={m['num_heads']} does not divide "
                     f"model.width={m['width']}")
  if (m["width"] // m["num_heads"]) % 4:
    raise ValueError(f"head dim {m['width'] // m['num_heads']} must be a multiple of 4 for "
                     f"2D RoPE (model.width / model.num_heads)")
  bits = tuple(m["sub_code_bits"])
  if not bits or sum(bits) != m["code_bits"] or min(bits) < 1:
    raise ValueError(f"model.sub_code_bits={bits} must be positive and sum to "
                     f"model.code_bits={m['code_bits']}")
  if m["attention"] not in ATTENTION_KINDS:
    raise ValueError(f"model.attention must be one of {ATTENTION_KINDS}, "
                     f"got {m['attention']!r}")
  if m["window"] < 1:
    raise ValueError(f"model.window must be >= 1, got {m['window']}")
  L = num_positions(m)
  keep = tuple(m["keep_values"])
  if not keep or any(not 1 <= k <= L for k in keep):
    raise ValueError(f"model.keep_values={keep} must be non-empty and within [1, L={L}]")
  if m["num_classes"] < 1:
    raise ValueError(f"model.num_classes must be >= 1, got {m['num_classes']}")


def keep_index(keep_values, num_keep) -> int:
  """Index of merge instruction K in `keep_values`; ValueError if the model was not trained
  with it."""
  keep_values = tuple(int(k) for k in keep_values)
  if int(num_keep) not in keep_values:
    raise ValueError(f"K={num_keep} is not a merge instruction this model knows "
                     f"(model.keep_values={keep_values})")
  return keep_values.index(int(num_keep))


def check_sampling(temperature, top_k, top_p, cfg_scale) -> None:
  """ValueError for sampling values that cannot work (concrete values, on the host)."""
  if not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if not math.isfinite(cfg_scale) or cfg_scale < 0:
    raise ValueError(f"CFG scale must be finite and >= 0, got {cfg_scale}")
