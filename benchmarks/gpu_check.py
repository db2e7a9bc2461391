"""One-GPU check, in one process, sized to finish in under 8 minutes on an H100/H200:

  * G+R stage-1 training step (configs/tokenizer_gr.py:gpu: bf16 compute, cuDNN attention;
    discriminator, LeCAM and source recovery on, as the trainer runs it): images/s, MFU
    against the chip's dense bf16 peak, peak device memory;
  * G+R tokenizer forward (reconstruct at K=144): images/s;
  * MergeAR-L decoding (configs/mergear_l.py:gpu, 16x16 codes, K=144), pruned and full KV
    cache, batch 1 / 64 / 256: tokens/s, and the fraction of the HBM-bandwidth bound, i.e.
    (bytes of the weights + the KV cache, read once per generated position) / HBM
    bandwidth, divided by the measured time.

  python benchmarks/gpu_check.py [--train_batch 32] [--forward_batch 64]
                                 [--decode_batches 1,64,256] [--json out.json]
  python benchmarks/gpu_check.py --smoke      # tiny configs: checks the script on a CPU

Needs only `pip install -e .` plus the CUDA jax wheel (no data, no weights: random
images and codes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_utils import header, load_config, print_table, timed  # noqa: E402

# Dense bf16 peak (TFLOP/s) and HBM bandwidth (TB/s) by device kind.
CHIPS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.0)}


def chip():
  import jax
  kind = jax.devices()[0].device_kind
  return kind, next((v for k, v in CHIPS.items() if k in kind), (None, None))


def peak_memory_gb() -> float | None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return round(peak / 2 ** 30, 2) if peak else None


def flops_of(stage) -> float:
  """FLOPs in XLA's cost analysis of a lowered (not yet compiled) function: the compiled
  GPU program's own analysis leaves out cuDNN custom calls (convolutions, fused
  attention): on an H200 it gave 47 GFLOP per G+R training image, whose forward pass alone
  is 222 GFLOP."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def tokenizer_config(smoke: bool, platform: str):
  cfg = load_config("tokenizer_tiny" if smoke else "tokenizer_gr", platform)
  cfg.loss.disc_start = 0
  return cfg


def train_step(smoke: bool, platform: str, batch: int, iters: int) -> dict:
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from mergevq_jax import sharding
  from mergevq_jax.train.tokenizer_state import create_state, graphs
  from mergevq_jax.train.tokenizer_step import Frozen, jit_train_step, make_train_step

  cfg = tokenizer_config(smoke, platform)
  cfg.train.batch_size = batch
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state, shardings = create_state(cfg, mesh, sharding.DEFAULT_RULES)
  fn = jit_train_step(make_train_step(cfg, graphs(cfg), Frozen()), shardings,
                      NamedSharding(mesh, P()), Frozen(), mesh)
  size = cfg.model.image_size
  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1, maxval=1)
  t0 = time.perf_counter()
  lowered = fn.lower(state, {"image": images}, Frozen(), cfg.model.num_keep)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], {"image": images}, Frozen())
    return metrics["g_total"]

  _, median = timed(one, iters)
  flops = flops_of(lowered)
  peak, _ = chip()[1]
  return {"check": "G+R train step" if not smoke else "tiny train step", "batch": batch,
          "compile_s": round(compile_s, 1), "step_ms": round(median * 1e3, 1),
          "images_per_s": round(batch / median, 1),
          "tflop_per_s": round(flops / median / 1e12, 1),
          "mfu": round(flops / median / (peak * 1e12), 3) if peak else None,
          "peak_mem_gb": peak_memory_gb()}


def forward(smoke: bool, platform: str, batch: int, iters: int) -> dict:
  import jax
  from flax import nnx

  from mergevq_jax.models.tokenizer import Tokenizer, jit_method

  cfg = tokenizer_config(smoke, platform)
  cfg.model.recovery.enabled = False
  graphdef, state = nnx.split(Tokenizer(cfg, rngs=nnx.Rngs(0)))
  fn = jit_method(graphdef, "reconstruct")
  size = cfg.model.image_size
  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1, maxval=1)
  first, median = timed(lambda: fn(state, images, num_keep=cfg.model.num_keep)[0], iters)
  return {"check": "G+R forward" if not smoke else "tiny forward", "batch": batch,
          "compile_s": round(first - median, 1), "step_ms": round(median * 1e3, 1),
          "images_per_s": round(batch / median, 1), "peak_mem_gb": peak_memory_gb()}


def decode(smoke: bool, platform: str, variant: str, batch: int, repeats: int) -> dict:
  """decode_bench's case on MergeAR-L, plus the HBM-bandwidth bound."""
  import jax
  from flax import nnx

  from benchmarks.decode_bench import case_decode
  from mergevq_jax.models.ar import kv_cache
  from mergevq_jax.models.ar.kv_cache import CacheLayout
  from mergevq_jax.models.ar.mergear import PREFIX, MergeAR

  args = types.SimpleNamespace(config=None if smoke else f"configs/mergear_l.py:{platform}",
                               width=0, layers=0, heads=0, window=4, keep=144,
                               dtype="auto", repeats=repeats)
  row = case_decode(variant, batch, args)
  from benchmarks.decode_bench import build_config
  cfg = build_config(args)
  abstract = nnx.eval_shape(lambda: MergeAR(cfg, rngs=nnx.Rngs(0)))
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(abstract)))
  layout = CacheLayout.make(PREFIX, abstract.num_positions,
                            "causal" if variant == "full" else "merge", args.keep, args.window)
  m = cfg.model
  cache = kv_cache.cache_bytes(layout, batch, m.num_layers, m.width,
                               jax.numpy.dtype(cfg.dtype).itemsize)
  _, bandwidth = chip()[1]
  out = {"check": f"MergeAR-{'L' if not smoke else 'bench'} decode, {variant} cache",
         "batch": batch, "compile_s": row["compile_s"], "step_ms": round(
             row["seconds"] / abstract.num_positions * 1e3, 3),
         "tokens_per_s": row["tokens_per_s"], "kv_cache_mb": row["kv_cache_mb"],
         "weights_mb": round(weight_bytes / 2 ** 20, 1)}
  if bandwidth:
    bound = abstract.num_positions * (weight_bytes + cache) / (bandwidth * 1e12)
    out["hbm_bound_fraction"] = round(bound / row["seconds"], 3)
  out["peak_mem_gb"] = peak_memory_gb()
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--train_batch", type=int, default=32)
  p.add_argument("--forward_batch", type=int, default=64)
  p.add_argument("--decode_batches", default="1,64,256")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--smoke", action="store_true", help="tiny configs, for a CPU dry run")
  p.add_argument("--json", default="")
  a = p.parse_args()
  import jax
  platform = "cpu" if a.smoke else "gpu"
  kind, (peak, bandwidth) = chip()
  print(header())
  print(f"# {kind}: dense bf16 peak {peak} TFLOP/s, HBM {bandwidth} TB/s (None: unknown chip)")
  if jax.default_backend() != "gpu" and not a.smoke:
    raise SystemExit("error: no GPU (jax.default_backend() is "
                     f"{jax.default_backend()!r}); install the CUDA jax wheel, or --smoke")
  t0 = time.time()
  rows = []

  def add(fn, *args):
    try:
      rows.append(fn(*args))
    except Exception as e:  # noqa: BLE001 -- one broken check must not hide the others
      name = f"{fn.__name__}{args[2:]}"
      rows.append({"check": name, "case": name, "error": f"{type(e).__name__}: {e}"[:300]})
    print(json.dumps(rows[-1]), flush=True)

  add(train_step, a.smoke, platform, a.train_batch, a.iters)
  add(forward, a.smoke, platform, a.forward_batch, a.iters)
  for batch in (int(b) for b in a.decode_batches.split(",") if b):
    for variant in ("pruned", "full"):
      add(decode, a.smoke, platform, variant, batch, 3)
  print_table(f"GPU check ({time.time() - t0:.0f} s)", rows,
              ["check", "batch", "compile_s", "step_ms", "images_per_s", "tokens_per_s",
               "tflop_per_s", "mfu", "hbm_bound_fraction", "kv_cache_mb", "weights_mb",
               "peak_mem_gb"])
  print("peak_mem_gb: the device's peak so far in this process (jax memory_stats)")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
