"""Input-pipeline throughput: images/s of the image-folder training pipeline (JPEG decode,
random-resized crop, flip, and with `--align` the weak/strong alignment views), in one
thread, and through grain with 0 (threads in the trainer's process) or N worker processes,
on JPEGs made from the offline sample photos at ImageNet-like sizes (shorter side ~375,
longer ~500, quality 90).

  python benchmarks/data_bench.py [--images 256] [--batches 6] [--workers 0,1,2]
                                  [--target 2000] [--json out.json]

"images per CPU-second" counts the CPU time of the trainer's process and its grain
workers (Linux /proc) over the timed batches, so it is the rate one fully used core gives;
the last column is the cores a host needs for `--target` images/s (default 2,000, the
figure to meet until the ahead-of-time step-time estimates exist).
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


def cpu_seconds() -> float:
  """CPU time (user + system) of this process and its live children (grain workers)."""
  own = os.times()
  total = own.user + own.system
  tick = os.sysconf("SC_CLK_TCK")
  me = str(os.getpid())
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if fields[1] == me:                      # ppid; utime, stime are fields 14, 15 of stat
      total += (int(fields[11]) + int(fields[12])) / tick
  return total


def one_thread_rate(root: str, align: bool, seconds: float = 8.0) -> tuple[float, float]:
  """(images/s, images per CPU-second) of decode + augment in one thread, no grain."""
  c = config_for(root, align, 1, 0)
  source = sources.source_from_config(c)
  transform = augment.TrainAugment.from_config(c)
  rng = np.random.default_rng(0)
  n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
  while time.perf_counter() - t0 < seconds:
    transform(source[n % len(source)], rng)
    n += 1
  return n / (time.perf_counter() - t0), n / (cpu_seconds() - c0)


def pipeline_rate(root: str, align: bool, batch: int, workers: int,
                  batches: int) -> tuple[float, float]:
  """(images/s, images per CPU-second) through make_train_iterator after one warm-up
  batch (worker start-up)."""
  it = make_train_iterator(config_for(root, align, batch, workers), seed=0, process_index=0,
                           process_count=1)
  next(it)
  t0, c0 = time.perf_counter(), cpu_seconds()
  for _ in range(batches):
    next(it)
  n = batches * batch
  return n / (time.perf_counter() - t0), n / (cpu_seconds() - c0)


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
      rate, per_cpu = one_thread_rate(root, align)
      rows.append({"pipeline": "1 thread, no grain", "views": views,
                   "images/s": round(rate, 1), "images per CPU-s": round(per_cpu, 1)})
      for workers in (int(w) for w in args.workers.split(",")):
        rate, per_cpu = pipeline_rate(root, align, args.batch, workers, args.batches)
        rows.append({"pipeline": f"grain, {workers} worker process(es)" if workers else
                     "grain, threads in the trainer's process",
                     "views": views, "images/s": round(rate, 1),
                     "images per CPU-s": round(per_cpu, 1)})
  target = f"cores for {args.target:g}/s"
  for r in rows:
    r[target] = int(np.ceil(args.target / r["images per CPU-s"]))
  print(f"{args.images} JPEGs (~500x375, quality 90), batch {args.batch}, {cpus} CPU cores "
        f"on this machine")
  print_table("Image-folder training pipeline (G+R config: 256x256 crops)", rows,
              ["pipeline", "views", "images/s", "images per CPU-s", target])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
