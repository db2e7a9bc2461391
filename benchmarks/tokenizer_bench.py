"""Tokenizer benchmark: forward throughput per variant and LFQ entropy-loss cost.

  python benchmarks/tokenizer_bench.py                 # everything, prints tables
  python benchmarks/tokenizer_bench.py --only lfq      # just the entropy table
  python benchmarks/tokenizer_bench.py --json out.json

Every case runs in its own subprocess, so "peak RSS" is that case's whole-process peak
(JAX runtime included; the idle baseline is printed too). Forward = encode + LFQ +
S^T Z + decode (`Tokenizer.reconstruct`), fp32, 256x256, timed after one compile.
Entropy = value and gradient of the LFQ entropy loss w.r.t. z (what training pays).
The PyTorch reference numbers are the authors' code measured on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import (header, load_config, peak_rss_mb, print_table,  # noqa: E402
                                    run_case, timed)

# Authors' PyTorch tokenizer, forward at batch 8 on 2 cores (images/s).
TORCH_FORWARD = {"g": 0.47, "gr": 1.13, "r": 1.62}
VARIANT_NAMES = {"g": "G", "gr": "G+R", "r": "R"}
LFQ_CASES = [  # (name, mode, bits, tokens)
    ("naive-14", "naive", 14, 8192),
    ("exact-14", "exact", 14, 8192),
    ("bit_groups-14", "bit_groups", 14, 8192),
    ("exact-18", "exact", 18, 65536),
]


def case_forward(variant: str, batch: int, iters: int) -> dict:
  import jax
  from flax import nnx
  from mergevq_jax.models.tokenizer import Tokenizer, jit_method

  cfg = load_config(f"tokenizer_{variant}")
  cfg.model.recovery.enabled = False  # not part of the forward pass
  baseline = peak_rss_mb()
  graphdef, state = nnx.split(Tokenizer(cfg, rngs=nnx.Rngs(0)))
  fn = jit_method(graphdef, "reconstruct")
  images = jax.random.uniform(jax.random.key(0), (batch, 256, 256, 3), minval=-1, maxval=1)
  first, median = timed(lambda: fn(state, images, num_keep=cfg.model.num_keep)[0], iters)
  return {"variant": VARIANT_NAMES[variant], "batch": batch, "num_keep": cfg.model.num_keep,
          "compile_s": round(first - median, 1), "step_s": round(median, 2),
          "images_per_s": round(batch / median, 3), "torch_images_per_s": TORCH_FORWARD[variant],
          "speedup_vs_torch": round(batch / median / TORCH_FORWARD[variant], 2),
          "baseline_rss_mb": round(baseline), "peak_rss_mb": round(peak_rss_mb())}


def case_lfq(name: str, mode: str, bits: int, tokens: int, iters: int) -> dict:
  import jax
  from mergevq_jax.models import lfq

  if mode == "naive":
    def loss(z):
      tok, batch = lfq.entropy_loss_naive(z)
      return tok - batch
  else:
    loss = lambda z: lfq.lfq(z, entropy_mode=mode).entropy_loss
  fn = jax.jit(jax.value_and_grad(loss))
  z = 0.01 * jax.random.normal(jax.random.key(0), (tokens, bits))
  baseline = peak_rss_mb()
  first, median = timed(lambda: fn(z), iters)
  value = float(fn(z)[0])
  return {"case": name, "mode": mode, "bits": bits, "tokens": tokens,
          "ms": round(1000 * median, 1), "loss": round(value, 5),
          "baseline_rss_mb": round(baseline), "peak_rss_mb": round(peak_rss_mb()),
          "naive_logits_gb": round(tokens * 2 ** bits * 4 / 1e9, 2)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", choices=["forward", "lfq"], default=None)
  p.add_argument("--variants", default="gr,g,r")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
  a = p.parse_args()

  if a.case:  # child process: one measurement, one JSON line
    kind, *rest = a.case
    if kind == "forward":
      print(json.dumps(case_forward(rest[0], a.batch, a.iters)))
    else:
      name, mode, bits, tokens = rest
      print(json.dumps(case_lfq(name, mode, int(bits), int(tokens), max(a.iters, 5))))
    return

  print(header() + " | fp32")
  results = {}
  if a.only in (None, "forward"):
    rows = [run_case(__file__, ["forward", v, "--batch", str(a.batch), "--iters", str(a.iters)])
            for v in a.variants.split(",")]
    results["forward"] = rows
    print_table(f"Tokenizer forward (reconstruct), 256x256, batch {a.batch}", rows,
                ["variant", "num_keep", "images_per_s", "torch_images_per_s", "speedup_vs_torch",
                 "step_s", "compile_s", "peak_rss_mb"])
  if a.only in (None, "lfq"):
    rows = [run_case(__file__, ["lfq", *map(str, c)]) for c in LFQ_CASES]
    results["lfq"] = rows
    print_table("LFQ entropy loss, value + gradient (target: exact-18 x 65,536 under 2 GB peak)",
                rows, ["case", "tokens", "ms", "loss", "peak_rss_mb", "baseline_rss_mb",
                       "naive_logits_gb"])
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
