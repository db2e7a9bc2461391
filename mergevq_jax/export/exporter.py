"""A run directory -> an export directory (`export_dir`): the trained weights as
safetensors, in the native layout or (tokenizer only) the authors' PyTorch layout, and
config.json with everything the PyTorch side needs.

Every check that can fail runs before the checkpoint is read: the run directory and its
stage, a checkpoint of this code's layout, the EMA when asked for, the authors' layout
only for a tokenizer, and a writable local --out.
"""
from __future__ import annotations

import os
import time

from mergevq_jax import checkpoint, cli, files, run_dir
from mergevq_jax.export import export_dir

WEIGHTS = ("", "ema", "raw")


def _has_ema(config) -> bool:
  return config.stage == "tokenizer" or config.train.ema_decay > 0


def check_run(workdir: str, weights: str, layout: str):
  """(config, step) of the run to export, or a ValueError naming the problem."""
  if weights not in WEIGHTS:
    raise ValueError(f"--weights={weights!r}: choose ema or raw")
  if layout not in export_dir.LAYOUTS:
    raise ValueError(f"--layout={layout!r}: choose one of {list(export_dir.LAYOUTS)}")
  if run_dir.read_stored_config(workdir) is None:
    raise ValueError(f"{files.join(workdir, run_dir.CONFIG_FILE)} not found: {workdir!r} is "
                     f"not a mergevq_jax run directory")
  config = run_dir.load_config(workdir)
  stage = config.get("stage")
  if stage not in checkpoint.LAYOUTS:
    raise ValueError(f"{workdir!r}: unknown stage {stage!r} in config.json "
                     f"(known: {sorted(checkpoint.LAYOUTS)})")
  if layout == "authors" and stage != "tokenizer":
    raise ValueError("--layout=authors: the authors' code has no MergeAR (it ships the "
                     "stage-1 tokenizers only); export a MergeAR run with --layout=native")
  if weights == "ema" and not _has_ema(config):
    raise ValueError(f"--weights=ema: {workdir!r} kept no EMA (train.ema_decay="
                     f"{config.train.ema_decay}); export --weights=raw")
  ckpt = checkpoint.Checkpointer(workdir, keep=1, layout=checkpoint.LAYOUTS[stage])
  try:
    if ckpt.latest_step() is None:
      raise ValueError(f"{workdir!r} has no checkpoint yet (nothing in "
                       f"{ckpt.directory}): train it first, or wait for its first save")
    step, _ = ckpt.step_and_meta()   # ValueError for a checkpoint of another layout
  finally:
    ckpt.close()
  if layout == "authors":
    from mergevq_jax.export import authors
    authors.check_supported(config)
  return config, step


def export_run(workdir: str, out: str, weights: str = "", layout: str = "native",
               max_shard_bytes: int = export_dir.MAX_SHARD_BYTES) -> dict:
  """Export the latest checkpoint of `workdir` into `out`; returns config.json's contents
  plus 'files' {name: bytes} and 'seconds'."""
  t0 = time.time()
  config, _ = check_run(workdir, weights, layout)   # everything checked before any weights
  if not files.is_local(out):
    raise ValueError(f"--out={out}: write the export to a local directory (copy it to "
                     f"gs:// afterwards if needed)")
  cli.output_dir(out, "--out")
  from mergevq_jax import pretrained
  from mergevq_jax.export import native
  use_ema = weights != "raw" and _has_ema(config)
  model, config, step = pretrained.load_model(workdir, config.stage, use_ema=use_ema)
  tensors = native.flat_params(model)
  info = {"stage": config.stage, "layout": layout, "weights": "ema" if use_ema else "raw",
          "step": step, "workdir": workdir, "torch_class": export_dir.STAGES[config.stage],
          "variant": config.model.get("variant"), "dtype": "float32",
          "num_tensors": len(tensors),
          "num_parameters": int(sum(v.size for v in tensors.values())),
          "config": config.to_dict()}
  written = []
  if layout == "authors":
    from mergevq_jax.export import authors
    tensors = authors.to_authors(tensors, config, keep_native_only=True)
    with open(os.path.join(out, authors.YAML_FILE), "w") as f:
      f.write(authors.yaml_snippet(config))
    written.append(authors.YAML_FILE)
  written += export_dir.write(out, tensors, info, max_shard_bytes)
  sizes = {name: os.path.getsize(os.path.join(out, name)) for name in written}
  return {**info, "files": sizes, "seconds": round(time.time() - t0, 1)}
