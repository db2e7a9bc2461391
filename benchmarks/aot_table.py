"""The TPU table of docs/pods_and_clusters.md and benchmarks/RESULTS.md: the real variants
compiled for v5e-16, v5p-32 and v5p-128 on this CPU host (`mergevq_jax.aot`; needs libtpu,
no TPU): the largest per-chip training batch that fits, HBM used, and the compiler's
estimate of images/s and MFU; MergeAR decoding at per-chip batch 256 with the pruned and
the full cache (no guidance).

  python benchmarks/aot_table.py                      # every case not done yet
  python benchmarks/aot_table.py --cases mergear_l    # some of them
  python benchmarks/aot_table.py --table              # print the table from what is done

Each (config, topology) case is written to benchmarks/results/aot/<config>_<slice>.json
as soon as it is compiled, and each compile of its batch search to <...>.search.json, so an
interrupted run continues where it stopped (a G+R step takes 10-20 minutes to compile on
2 cores). The tokenizer is compiled at its largest K (the
memory bound) with the frozen LPIPS-VGG16 and DINOv2 teacher in the step. On v5p-128 the
per-chip batch searched on v5p-32 is compiled directly (under fsdp the per-chip memory
differs only by the state's shards).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_utils import load_config  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "aot")
TOPOLOGIES = ("v5e-16", "v5p-32", "v5p-128")
CONFIGS = ("mergear_l", "mergear_l_g32", "tokenizer_gr", "mergear_b", "mergear_xl", "tokenizer_r",
           "tokenizer_g")
DECODE_BATCHES = (256,)


def case_path(config: str, topology: str) -> str:
  return os.path.join(RESULTS, f"{config}_{topology}.json")


# Cases beyond the config files: MergeAR-L on the G tokenizer's 32x32 codes (L=1024, K=256),
# decoding only (where the pruned cache matters most).
EXTRA = {"mergear_l_g32": ("mergear_l", ("decode",))}


def case_config(name: str):
  from mergevq_jax.config import keep_candidates
  config = load_config(EXTRA.get(name, (name,))[0], "tpu")
  if name == "mergear_l_g32":
    config.model.grid = (32, 32)
    config.model.keep_values = keep_candidates(256, 9)   # 225, 256, ..., as G's
  return config


def _search_log(name: str, topology: str):
  """(rows compiled by an interrupted search, callback that appends a row to its file)."""
  path = case_path(name, topology).replace(".json", ".search.json")
  rows = json.load(open(path)) if os.path.exists(path) else []

  def save(row):
    rows.append(row)
    with open(path, "w") as f:
      json.dump(rows, f, indent=1)
  return list(rows), save


def run_case(name: str, topology: str) -> dict:
  from mergevq_jax.aot.run import run
  config = case_config(name)
  functions = EXTRA.get(name, (None, ("train", "decode")))[1]
  start = 4 if config.stage == "tokenizer" and not topology.startswith("v5e") else 1
  fixed = False
  if topology == "v5p-128" and os.path.exists(case_path(name, "v5p-32")):
    with open(case_path(name, "v5p-32")) as f:
      start = json.load(f)["best_batch"] or 1
    fixed = True
  t0 = time.time()
  if fixed:
    out = run(config, topology, per_chip_batch=start, decode_batches=DECODE_BATCHES,
              keeps=_largest_k(config), guidance=(False,), functions=functions)
  else:
    known, save = _search_log(name, topology)
    out = run(config, topology, find_max=True, decode_batches=DECODE_BATCHES,
              keeps=_largest_k(config), search_start=start, guidance=(False,),
              functions=functions, known_rows=known, on_row=save)
  train = [r for r in out["rows"] if r["function"].startswith("train")]
  out.update(config=name, seconds=round(time.time() - t0),
             best_batch=(train[0]["per_chip_batch"] if train and train[0]["fits"] else 0)
             if "train" in functions else None,
             batch_from="v5p-32 search" if fixed else "search")
  return out


def _largest_k(config):
  if config.stage != "tokenizer":
    return ()
  return (max(config.model.keep_candidates or (config.model.num_keep,)),)


TABLE_COLUMNS = ("config", "slice", "function", "per_chip_batch", "total_gib", "hbm_gib",
                 "images_per_s", "images_per_s_at_most", "tokens_per_s", "mfu",
                 "step_bytes_vs_must_read", "vs_hbm_bound", "estimate_from", "compile_s")


def table() -> str:
  from mergevq_jax.aot.run import markdown_table
  rows, missing = [], []
  for name in CONFIGS:
    for topology in TOPOLOGIES:
      path = case_path(name, topology)
      if not os.path.exists(path):
        missing.append(f"{name} on {topology}")
        continue
      with open(path) as f:
        case = json.load(f)
      for r in case["rows"]:
        rows.append({"config": name, **r})
  text = markdown_table(rows, TABLE_COLUMNS)
  if missing:
    text += f"\n\nnot compiled yet: {', '.join(missing)}"
  return text


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default=",".join(CONFIGS), help="configs (comma-separated)")
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--force", action="store_true", help="compile cases that are done again")
  p.add_argument("--table", action="store_true", help="only print the table of what is done")
  a = p.parse_args()
  if not a.table:
    os.makedirs(RESULTS, exist_ok=True)
    for name in a.cases.split(","):
      for topology in a.topologies.split(","):
        path = case_path(name, topology)
        if os.path.exists(path) and not a.force:
          continue
        print(f"=== {name} on {topology}", flush=True)
        case = run_case(name, topology)
        with open(path, "w") as f:
          json.dump(case, f, indent=1)
        print(f"=== {name} on {topology}: {case['seconds']} s, per-chip batch "
              f"{case['best_batch']}", flush=True)
  print(table())


if __name__ == "__main__":
  main()
