"""Input-pipeline throughput: images/s of the image-folder training pipeline (JPEG decode,
random-resized crop, flip, and with `--align` the weak/strong alignment views), in one
thread, and through grain with 0 (threads in the trainer's process) or N worker processes,
on JPEGs made from the offline sample photos at ImageNet-like sizes (shorter side ~375,
longer ~500, quality 90).

  python benchmarks/data_bench.py [--images 256] [--batches 6] [--workers 0,1,2]
                                  [--target 2000] [--json out.json]

The last column is the CPU cores a host needs for `--target` images/s (default 2,000, the
issue's figure until the ahead-of-time step-time estimates exist), at the measured rate
per core.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_utils import load_config, print_table  # noqa: E402
from mergevq_jax.data import augment, sources  # noqa: E402
from mergevq_jax.data.pipeline import make_train_iterator  # noqa: E402

CLASSES = 8


def make_jpegs(root: str, n: int, seed: int = 0) -> None:
  """n JPEGs in CLASSES class folders: sample photos resized to ImageNet-like sizes."""
  photos = sources.SampleImages()
  rng = np.random.default_rng(seed)
  for i in range(n):
    image = Image.fromarray(photos[i % len(photos)]["image"])
    short, long = int(rng.integers(333, 420)), int(rng.integers(450, 520))
    size = (long, short) if image.width >= image.height else (short, long)
    folder = os.path.join(root, "train", f"class_{i % CLASSES:02d}")
    os.makedirs(folder, exist_ok=True)
    image.resize(size, Image.BICUBIC).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def config_for(root: str, align: bool, batch: int, workers: int):
  c = load_config("tokenizer_gr", None)
  c.data.source, c.data.path = "folder", root
  c.data.align_views, c.data.num_workers = align, workers
  c.train.batch_size = batch
  return c


def one_thread_rate(root: str, align: bool, seconds: float = 8.0) -> float:
  """Images/s of decode + augment in one thread, no grain: the rate of one CPU core."""
  c = config_for(root, align, 1, 0)
  source = sources.source_from_config(c)
  transform = augment.TrainAugment.from_config(c)
  rng = np.random.default_rng(0)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    transform(source[n % len(source)], rng)
    n += 1
  return n / (time.perf_counter() - t0)


def pipeline_rate(root: str, align: bool, batch: int, workers: int, batches: int) -> float:
  """Images/s through make_train_iterator after one warm-up batch (worker start-up)."""
  it = make_train_iterator(config_for(root, align, batch, workers), seed=0, process_index=0,
                           process_count=1)
  next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=6)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--target", type=float, default=2000.0)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  cpus = os.cpu_count() or 1
  rows = []
  with tempfile.TemporaryDirectory(prefix="mergevq_data_bench_") as root:
    make_jpegs(root, args.images)
    for align in (False, True):
      views = "main + weak/strong 224" if align else "main 256"
      per_core = one_thread_rate(root, align)
      rows.append({"pipeline": "1 thread, no grain", "views": views, "cores": 1,
                   "images/s": round(per_core, 1), "images/s per core": round(per_core, 1)})
      for workers in (int(w) for w in args.workers.split(",")):
        rate = pipeline_rate(root, align, args.batch, workers, args.batches)
        cores = cpus if workers == 0 else min(cpus, workers)
        rows.append({"pipeline": f"grain, {workers} worker processes" if workers else
                     f"grain, threads in the trainer ({cpus} cores)",
                     "views": views, "cores": cores, "images/s": round(rate, 1),
                     "images/s per core": round(rate / cores, 1)})
      for r in rows[-(1 + len(args.workers.split(","))):]:
        r[f"cores for {args.target:g}/s"] = int(np.ceil(args.target / r["images/s per core"]))
  print(f"{args.images} JPEGs (~500x375, quality 90), batch {args.batch}, {cpus} CPU cores "
        f"on this machine")
  print_table("Image-folder training pipeline (G+R config: 256x256 crops)", rows,
              ["pipeline", "views", "cores", "images/s", "images/s per core",
               f"cores for {args.target:g}/s"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
