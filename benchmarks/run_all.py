"""Every benchmark, one report: runs the scripts in benchmarks/ one after another and writes
benchmarks/RESULTS.md (machine, versions, date, and the tables each script prints).

  python benchmarks/run_all.py                       # all (~45 min on 2 CPU cores)
  python benchmarks/run_all.py --only decode,data    # some of them (names below)
  python benchmarks/run_all.py --quick --out /tmp/R.md   # each at its smallest: a smoke run

What runs where: the CPU benchmarks everywhere; `gpu` (benchmarks/gpu_check.py) only where
JAX sees a GPU, its rows saved to benchmarks/results/gpu/<device>_<date>.json; `aot` (the
TPU compile table) where libtpu is installed, printed from the compiles stored in
benchmarks/results/aot/ (compiling the missing cases takes hours: `python
benchmarks/aot_table.py`). The report also shows every GPU run stored in results/gpu/,
with its device and date, so a report made on a CPU keeps the GPU rows of earlier runs.
Numbers are measurements on the machine named at the top; nothing is a timed assertion.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GPU_RESULTS = os.path.join(HERE, "results", "gpu")


@dataclasses.dataclass(frozen=True)
class Bench:
  name: str
  script: str
  what: str
  args: tuple[str, ...] = ()
  quick: tuple[str, ...] = ()          # the smallest run that still prints its table
  needs: str = ""                      # '', 'gpu' or 'libtpu'


BENCHES = (
    Bench("tokenizer", "tokenizer_bench.py",
          "Tokenizer forward per variant next to the authors' PyTorch on the same CPU; the "
          "LFQ entropy loss", (), ("--variants", "gr", "--batch", "1", "--iters", "1",
                                   "--only", "forward")),
    Bench("train", "train_bench.py",
          "Stage-1 training step (demo and G+R at 256x256) next to the authors' PyTorch",
          (), ("--only", "demo", "--iters", "1")),
    Bench("decode", "decode_bench.py",
          "MergeAR decoding, G+R geometry (L=256, K=144): pruned vs full cache vs a Python "
          "loop", (), ("--batches", "1", "--repeats", "1", "--layers", "1", "--width", "64",
                       "--heads", "2")),
    Bench("decode_g", "decode_bench.py",
          "MergeAR decoding at the G tokenizer's geometry (L=1024, K=256), batch 64",
          ("--grid", "32", "--keep", "256", "--batches", "64", "--variants", "pruned,full",
           "--repeats", "1"),
          ("--grid", "32", "--keep", "256", "--batches", "1", "--variants", "pruned,full",
           "--repeats", "1", "--layers", "1", "--width", "64", "--heads", "2")),
    Bench("decode_compile", "decode_compile_bench.py",
          "MergeAR decoder: program size and compile time per platform",
          (), ("--configs", "mergear_tiny", "--platforms", "cpu")),
    Bench("fsdp_memory", "fsdp_memory.py",
          "Train state per device, replicated and FSDP, 1-8 devices (computed, no memory used)"),
    Bench("data", "data_bench.py", "Input pipeline: images/s per worker layout",
          (), ("--images", "16", "--batch", "8", "--batches", "2", "--workers", "0")),
    Bench("gpu", "gpu_check.py", "One GPU: training step, forward, decoding vs the HBM bound",
          needs="gpu"),
    Bench("aot", "aot_table.py",
          "TPU ahead-of-time compiles (compiler estimates, per chip; stored compiles)",
          ("--table",), ("--table",), needs="libtpu"),
)


def missing_requirement(need: str) -> str | None:
  """None when the machine has what a benchmark needs, else why it is skipped."""
  if need == "libtpu":
    from mergevq_jax.aot import chips
    return chips.libtpu_missing_message()
  if need == "gpu":
    import jax
    return None if jax.default_backend() == "gpu" else "no GPU on this machine"
  return None


def machine() -> list[str]:
  import jax
  import flax
  devices = jax.devices()
  cpu = ""
  if os.path.exists("/proc/cpuinfo"):
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
             if line.startswith("model name")]
    cpu = names[0] if names else ""
  return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
          f"- machine: {platform.node()}, {os.cpu_count()} CPU cores{f' ({cpu})' if cpu else ''}, "
          f"{platform.system()} {platform.release()}",
          f"- accelerator: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})",
          f"- python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}"
          + _torch_version()]


def _torch_version() -> str:
  try:
    import torch
    return f", torch {torch.__version__}"
  except ImportError:
    return ""


def as_markdown(stdout: str) -> str:
  """A script's output as markdown: its tables stay tables (a blank line before each),
  comment lines ('# ...': its machine header, repeated above) and JSON progress lines go."""
  out, in_table = [], False
  for line in stdout.splitlines():
    if line.startswith("#") or line.startswith("{") or line.startswith("==="):
      continue
    table = line.startswith("|")
    if table and not in_table and out and out[-1]:
      out.append("")
    if not table and in_table and line:
      out.append("")
    out.append(line)
    in_table = table
  return "\n".join(out).strip()


def run(bench: Bench, quick: bool, log) -> str:
  """The markdown section body of one benchmark run in its own process."""
  args = list(bench.quick if quick else bench.args)
  saved = None
  if bench.name == "gpu":
    os.makedirs(GPU_RESULTS, exist_ok=True)
    saved = os.path.join(GPU_RESULTS, f"{_device_slug()}_{datetime.date.today()}.json")
    args += ["--json", saved] + (["--smoke"] if quick else [])
  command = ["python", f"benchmarks/{bench.script}", *args]
  log(f"[{bench.name}] {' '.join(command)}")
  t0 = time.time()
  with tempfile.TemporaryFile("w+") as err:
    done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=err, text=True)
    err.seek(0)
    stderr = err.read()
  seconds = time.time() - t0
  body = f"`{' '.join(command)}` ({seconds:.0f} s)\n\n"
  if done.returncode:
    tail = "\n".join(stderr.strip().splitlines()[-6:])
    body += f"**Failed** (exit {done.returncode}):\n\n```\n{tail}\n```\n"
    log(f"[{bench.name}] FAILED (exit {done.returncode}) after {seconds:.0f} s")
  else:
    body += as_markdown(done.stdout) + "\n"
    log(f"[{bench.name}] done in {seconds:.0f} s")
  if saved and os.path.exists(saved):
    _stamp_gpu_file(saved)
  return body


def _device_slug() -> str:
  import jax
  return "".join(c if c.isalnum() else "_" for c in jax.devices()[0].device_kind).strip("_")


def _stamp_gpu_file(path: str) -> None:
  """gpu_check writes its rows; keep the device, date and versions with them."""
  import jax
  with open(path) as f:
    rows = json.load(f)
  with open(path, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "date": str(datetime.date.today()),
               "jax": jax.__version__, "rows": rows}, f, indent=1)


GPU_COLUMNS = ("check", "batch", "compile_s", "step_ms", "images_per_s", "tokens_per_s",
               "hbm_bound_fraction", "kv_cache_mb", "peak_mem_gb")


def stored_gpu_runs() -> str:
  """Every GPU run kept in results/gpu/, newest first, each a table under its device."""
  from mergevq_jax.aot.run import markdown_table
  parts = []
  for path in sorted(glob.glob(os.path.join(GPU_RESULTS, "*.json")), reverse=True):
    with open(path) as f:
      run_ = json.load(f)
    columns = [c for c in GPU_COLUMNS if any(c in r for r in run_["rows"])]
    parts.append(f"**{run_['device']}**, {run_['date']}, jax {run_['jax']}"
                 f"{', ' + run_['note'] if run_.get('note') else ''} "
                 f"(`benchmarks/results/gpu/{os.path.basename(path)}`)\n\n"
                 + markdown_table(run_["rows"], columns))
  return "\n\n".join(parts)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", default="", help="comma-separated: " + ",".join(b.name for b in BENCHES))
  p.add_argument("--quick", action="store_true",
                 help="each benchmark at its smallest (checks the scripts, not the machine)")
  p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
  a = p.parse_args()
  names = [n for n in a.only.split(",") if n]
  unknown = set(names) - {b.name for b in BENCHES}
  if unknown:
    p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from "
            f"{', '.join(b.name for b in BENCHES)}")
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)) or ".", exist_ok=True)
  t0 = time.time()
  sections = []
  chosen = [b for b in BENCHES if not names or b.name in names]
  for i, bench in enumerate(chosen, 1):
    log(f"({i}/{len(chosen)}) {bench.name}: {bench.what}")
    why = missing_requirement(bench.needs)
    body = f"Not run: {why}.\n" if why else run(bench, a.quick, log)
    if bench.name == "gpu":
      stored = stored_gpu_runs()
      body += ("\nGPU runs stored in `benchmarks/results/gpu/`:\n\n" + stored + "\n"
               if stored else "")
    sections.append(f"## {bench.name}: {bench.what}\n\n{body}")
  title = "# Benchmark results" + (" (quick smoke run: not representative)" if a.quick else "")
  text = "\n".join([
      title, "",
      "Written by `python benchmarks/run_all.py"
      + (f" --only {a.only}" if names else "") + (" --quick" if a.quick else "")
      + f"` in {time.time() - t0:.0f} s. Measurements on this machine; the `aot` table is "
      "the TPU compiler's estimates, the GPU rows come from the device named above them.",
      "", *machine(), "", *sections])
  with open(a.out, "w") as f:
    f.write(text.rstrip() + "\n")
  log(f"wrote {a.out}")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
