"""The export directory: what `python -m mergevq_jax.export` writes and both the PyTorch
loader and the importer read. numpy, json and safetensors only (no JAX, no PyTorch).

  config.json                       FORMAT tag, stage, layout, weights, step, source run,
                                    the project's config ("config"), the PyTorch class
  model.safetensors                 every tensor, metadata {"format": "pt", ...}
  (or model-0000i-of-0000n.safetensors + model.safetensors.index.json above the shard size,
   the Hugging Face convention: {"metadata": {"total_size"}, "weight_map": {name: file}})
  authors_config.yaml               with --layout=authors: their configs/gpu_s1 model section
"""
from __future__ import annotations

import json
import os

import numpy as np

FORMAT = "mergevq_jax.export.v1"
CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
STAGES = {"tokenizer": "MergeVQTokenizer", "mergear": "MergeAR"}
LAYOUTS = ("native", "authors")
MAX_SHARD_BYTES = 2_000_000_000


def _shard_name(i: int, n: int) -> str:
  return f"model-{i:05d}-of-{n:05d}.safetensors"


def write(out_dir: str, tensors: dict[str, np.ndarray], info: dict,
          max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
  """Write `tensors` and config.json (`info` + FORMAT) into `out_dir`; one file, or shards of
  at most `max_shard_bytes` each (a larger tensor gets a shard of its own) with an index.
  Returns the files written."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  meta = {"format": "pt", "mergevq_jax": FORMAT, "stage": info["stage"],
          "layout": info["layout"]}
  shards: list[dict] = [{}]
  size = 0
  for name, value in tensors.items():
    value = np.ascontiguousarray(value)
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  names = [SINGLE] if len(shards) == 1 else [_shard_name(i + 1, len(shards))
                                             for i in range(len(shards))]
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(out_dir, name), metadata=meta)
  if len(shards) > 1:
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
             "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
    with open(os.path.join(out_dir, INDEX), "w") as f:
      json.dump(index, f, indent=1)
    names.append(INDEX)
  for stale in _tensor_files(out_dir, keep=names):
    os.remove(os.path.join(out_dir, stale))   # shards of an earlier, larger export
  with open(os.path.join(out_dir, CONFIG), "w") as f:
    json.dump({"format": FORMAT, **info}, f, indent=1)
  return names + [CONFIG]


def _tensor_files(out_dir: str, keep=()) -> list[str]:
  return [f for f in os.listdir(out_dir) if f not in keep and (
      f == SINGLE or f == INDEX or (f.startswith("model-") and f.endswith(".safetensors")))]


def read_info(path: str, stage: str | None = None) -> dict:
  """config.json of an export directory, checked: FORMAT tag, known stage and layout, and
  (when given) the expected `stage`. ValueError saying what is wrong otherwise."""
  file = os.path.join(path, CONFIG)
  if not os.path.isfile(file):
    raise ValueError(f"{file} not found: {path!r} is not a mergevq_jax export directory "
                     f"(write one with python -m mergevq_jax.export --workdir=RUN --out=DIR)")
  with open(file) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ValueError(f"{file}: format {info.get('format')!r}, this code reads {FORMAT!r}")
  if info.get("stage") not in STAGES or info.get("layout") not in LAYOUTS:
    raise ValueError(f"{file}: unknown stage {info.get('stage')!r} or layout "
                     f"{info.get('layout')!r} (known: {sorted(STAGES)}, {list(LAYOUTS)})")
  if stage is not None and info["stage"] != stage:
    raise ValueError(f"{path!r} holds a {info['stage']} ({STAGES[info['stage']]}), not a "
                     f"{stage}: load it with {STAGES[info['stage']]}.from_pretrained")
  return info


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of an export directory (single file or index + shards) as numpy."""
  from safetensors.numpy import load_file
  index = os.path.join(path, INDEX)
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    out = {}
    for name in sorted(set(weight_map.values())):
      out.update(load_file(os.path.join(path, name)))
    missing = sorted(set(weight_map) - set(out))
    if missing:
      raise ValueError(f"{index} lists {len(missing)} tensor(s) its shards lack: {missing}")
    return out
  single = os.path.join(path, SINGLE)
  if not os.path.isfile(single):
    raise ValueError(f"{path!r} has neither {SINGLE} nor {INDEX}")
  return load_file(single)


def mismatches(tensors: dict, expected: dict[str, tuple[int, ...]]) -> list[str]:
  """Every missing, unexpected and mis-shaped name of `tensors` against `expected`
  {name: shape}, one line each (empty when they agree)."""
  lines = [f"missing: {k} {list(s)}" for k, s in expected.items() if k not in tensors]
  lines += [f"unexpected: {k} {list(np.shape(v))}" for k, v in tensors.items()
            if k not in expected]
  lines += [f"wrong shape: {k} is {list(np.shape(tensors[k]))}, the model has {list(s)}"
            for k, s in expected.items() if k in tensors and tuple(np.shape(tensors[k])) != s]
  return lines


def check_tensors(tensors: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
  """ValueError listing every mismatch of `tensors` against `expected` shapes."""
  problems = mismatches(tensors, expected)
  if problems:
    raise ValueError(f"{what}: {len(problems)} tensor(s) do not match the model:\n  "
                     + "\n  ".join(problems))
