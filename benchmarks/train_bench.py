"""Stage-1 training-step benchmark: throughput, peak memory, model FLOP rate.

  python benchmarks/train_bench.py [--json out.json] [--only demo,gr-b4-l1,...]

Rows (each in its own process, so peak RSS is that case's whole-process peak):
  * demo      the main demo's step (configs/demo_cpu.py: 64x64, D + recovery on);
  * gr-b4-l1  G+R 256x256, batch 4, L1 + LFQ losses + Adam: the authors' PyTorch step
              (0.28 images/s, 13.7 GB peak on 2 cores) that we must beat by 1.3x;
  * gr-b4-full  the same plus PatchGAN discriminator (hinge + LeCAM) and source recovery;
  * gr-b8-l1  G+R at batch 8 (the largest batch tried here on 24 GiB).
FLOPs come from XLA's cost analysis of the compiled step; on a GPU the FLOP rate is also
given as model FLOPs utilisation against the chip's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (header, load_config, peak_rss_mb, print_table,  # noqa: E402
                                    run_case, timed)
from mergevq_jax import host_memory  # noqa: E402

TORCH_STEP = {"images_per_s": 0.28, "peak_gb": 13.7}  # authors' G+R, batch 4, L1 + LFQ + Adam
CPU_PEAK_GFLOPS = 315.0                               # fp32 matmul peak measured on 2 cores
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16

CASES = {  # name: (config, batch, discriminator, recovery)
    "demo": ("demo_cpu", 8, True, True),
    "gr-b4-l1": ("tokenizer_gr", 4, False, False),
    "gr-b4-full": ("tokenizer_gr", 4, True, True),
    "gr-b8-l1": ("tokenizer_gr", 8, False, False),
}


def case_step(name: str, iters: int) -> dict:
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P

  from mergevq_jax import sharding
  from mergevq_jax.train.tokenizer_state import create_state, graphs
  from mergevq_jax.train.tokenizer_step import Frozen, jit_train_step, make_train_step

  config_name, batch, use_disc, use_recovery = CASES[name]
  cfg = load_config(config_name, None if config_name == "demo_cpu" else "cpu")
  if jax.default_backend() == "gpu":
    cfg.dtype = "bfloat16"
  cfg.train.batch_size = batch
  cfg.disc.enabled = use_disc
  cfg.model.recovery.enabled = use_recovery
  cfg.loss.disc_start = 0
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rules = sharding.DEFAULT_RULES
  state, shardings = create_state(cfg, mesh, rules)
  fn = jit_train_step(make_train_step(cfg, graphs(cfg), Frozen()), shardings,
                      NamedSharding(mesh, P()), Frozen(), mesh)
  size = cfg.model.image_size
  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1, maxval=1)
  host_memory.release_free_memory()  # as the trainer does after init and each compile
  compiled = fn.lower(state, {"image": images}, Frozen(), cfg.model.num_keep).compile()
  host_memory.release_free_memory()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  mem = compiled.memory_analysis()
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], {"image": images}, Frozen())
    return metrics["g_total"]

  first, median = timed(one, iters)
  row = {"case": name, "image_size": size, "batch": batch, "step_s": round(median, 2),
         "images_per_s": round(batch / median, 3), "compile_s": round(first - median, 1),
         "peak_rss_gb": round(peak_rss_mb() / 1024, 2),
         "xla_temp_gb": round(mem.temp_size_in_bytes / 2**30, 2) if mem else "",
         "state_gb": round(mem.argument_size_in_bytes / 2**30, 2) if mem else "",
         "model_gflop_per_s": round(flops / median / 1e9, 1)}
  if name.startswith("gr-b4-l1"):
    row["torch_images_per_s"] = TORCH_STEP["images_per_s"]
    row["torch_peak_gb"] = TORCH_STEP["peak_gb"]
    row["speedup_vs_torch"] = round(row["images_per_s"] / TORCH_STEP["images_per_s"], 2)
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in kind), None)
  if jax.default_backend() == "gpu" and peak:
    row["mfu"] = round(flops / median / (peak * 1e12), 3)
  elif jax.default_backend() == "cpu":
    row["fraction_of_cpu_peak"] = round(flops / median / 1e9 / CPU_PEAK_GFLOPS, 2)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", default=None, help="comma-separated case names: " + ",".join(CASES))
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--json", default=None)
  p.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.case:
    print(json.dumps(case_step(a.case[0], a.iters)))
    return
  print(header() + " | fp32 on CPU, bf16 compute on GPU")
  names = a.only.split(",") if a.only else list(CASES)
  rows = []
  for n in names:
    config_name, batch = CASES[n][:2]
    size = load_config(config_name, None).model.image_size
    rows.append(run_case(__file__, [n, "--iters", str(a.iters)],
                         large_step=host_memory.large_step(size, batch)))
  print_table("Stage-1 training step (target: gr-b4-l1 >= 1.3 x 0.28 images/s, far below 13.7 GB)",
              rows, ["case", "image_size", "batch", "images_per_s", "torch_images_per_s",
                     "speedup_vs_torch", "step_s", "compile_s", "peak_rss_gb", "torch_peak_gb",
                     "xla_temp_gb", "state_gb",
                     "model_gflop_per_s", "fraction_of_cpu_peak", "mfu"])
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
