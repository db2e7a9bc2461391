"""Shared by the benchmark scripts: timing, peak memory, one-case-per-subprocess, tables."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from mergevq_jax.config import load_config_file
from mergevq_jax.host_memory import malloc_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, iters: int) -> tuple[float, float]:
  """(first call incl. compile, median of `iters` later calls), seconds."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def load_config(name: str, platform: str | None = "cpu"):
  return load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), platform)


def run_case(script: str, args: list[str], large_step: bool = False) -> dict:
  """Run `script --case *args` in a fresh process with the malloc tunables the trainer
  would use (`large_step`: see `host_memory`); its last stdout line is JSON."""
  out = subprocess.run([sys.executable, script, "--case", *args], capture_output=True, text=True,
                       env=malloc_env(large=large_step))
  if out.returncode:
    tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"case": " ".join(args), "error": tail[-300:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
  print(f"\n{title}")
  widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
  print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows:
    if "error" in r:
      print(f"| {r['case']}: ERROR {r['error']}")
      continue
    print("| " + " | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)) + " |")


def header() -> str:
  import platform
  import jax
  return (f"# {platform.node()} | {os.cpu_count()} CPUs | jax {jax.__version__} | "
          f"backend {jax.default_backend()} | {jax.devices()[0].device_kind} | cases run with "
          f"GLIBC_TUNABLES={malloc_env().get('GLIBC_TUNABLES', '(unset)')} "
          f"(large steps: {malloc_env(large=True).get('GLIBC_TUNABLES', '(unset)')})")
