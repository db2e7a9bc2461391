"""Compile cost of MergeAR's jitted decoder per model depth: HLO size and compile time of
`make_generate_fn` (pruned and full cache, no guidance) for mergear_tiny, _b and _l.

  python benchmarks/decode_compile_bench.py [--configs mergear_tiny,mergear_b] \
      [--platforms cpu,tpu] [--json out.json]

On the 'gpu' and 'tpu' platforms the decoder scans over the stacked layers, so its
program should not grow with depth; on 'cpu' it unrolls them (`decode.scans_layers`).
`--platforms` sets config.platform only (dtype stays float32), so this CPU compiles both
programs. Each case compiles in its own process (batch 1, K = the middle merge
instruction).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import header, load_config, print_table, run_case  # noqa: E402


def case(name: str, platform: str) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from mergevq_jax.models.ar import decode as md
  from mergevq_jax.models.ar.kv_cache import CacheLayout
  from mergevq_jax.models.ar.mergear import PREFIX, MergeAR
  from mergevq_jax.models.ar.sampling import SamplingParams

  cfg = load_config(name)
  cfg.platform = platform
  graphdef, state = nnx.split(nnx.eval_shape(lambda: MergeAR(cfg, rngs=nnx.Rngs(0))))
  m = cfg.model
  keep = sorted(m.keep_values)[len(m.keep_values) // 2]
  L = int(m.grid[0]) * int(m.grid[1])
  rows = {}
  for mode in ("merge", "causal"):
    layout = CacheLayout.make(PREFIX, L, mode, keep if mode == "merge" else 0, m.window)
    fn = md.make_generate_fn(graphdef, layout, guidance=False)
    args = (state, jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32),
            SamplingParams.make(1.0, 0, 1.0, 1.0))
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    hlo = lowered.as_text()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    rows[mode] = {"hlo_kb": round(len(hlo) / 1024, 1),
                  "compiled_hlo_kb": round(len(compiled.as_text()) / 1024, 1),
                  "compile_s": round(seconds, 2)}
  return {"config": name, "platform": platform, "layers": m.num_layers, "width": m.width, **{
      f"{mode}_{k}": v for mode, r in rows.items() for k, v in r.items()}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="mergear_tiny,mergear_b,mergear_l")
  p.add_argument("--platforms", default="cpu,tpu")
  p.add_argument("--json", default="")
  p.add_argument("--case", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.case:
    print(json.dumps(case(*a.case.split(":"))))
    return
  print(header())
  rows = [run_case(__file__, [f"{name}:{platform}"]) for platform in a.platforms.split(",")
          for name in a.configs.split(",")]
  print_table("MergeAR decoder compile cost (batch 1, no guidance)", rows, ["config", "platform", "layers", "width", "merge_hlo_kb", "merge_compiled_hlo_kb",
                     "merge_compile_s", "causal_hlo_kb", "causal_compiled_hlo_kb",
                     "causal_compile_s"])
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
