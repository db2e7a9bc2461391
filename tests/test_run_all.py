"""benchmarks/run_all.py writes one report: the machine, each benchmark's tables as
markdown, 'not run' with the reason where the machine lacks what a benchmark needs, the
stored GPU runs with their device, and a failed benchmark as a failure, not a stop."""
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import run_all  # noqa: E402


def test_tables_stay_tables_and_comment_lines_go():
  text = run_all.as_markdown("# host | 2 CPUs\n{\"row\": 1}\n\nTitle\n| a | b |\n|---|---|\n"
                             "| 1 | 2 |\nnote after")
  assert text == "Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnote after"


def test_quick_report_of_cheap_benchmarks(tmp_path):
  out = tmp_path / "RESULTS.md"
  done = subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick",
                         "--only", "fsdp_memory,data,gpu", "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("# Benchmark results (quick smoke run")
  assert "- machine: " in text and "jax " in text
  assert "## fsdp_memory:" in text and "## data:" in text
  assert "| pipeline" in text                           # data_bench's table, as markdown
  assert "G+R tokenizer" in text                        # fsdp_memory's rows
  assert "Not run: no GPU on this machine." in text
  assert "**NVIDIA H200**, 2026-11-28" in text and "| G+R train step (bf16)" in text
  assert "(3/3) gpu" in done.stderr                     # progress on stderr


def test_a_failing_benchmark_is_reported_not_raised():
  bench = run_all.Bench("bad", "data_bench.py", "a broken call", quick=("--no_such_flag",))
  body = run_all.run(bench, quick=True, log=lambda msg: None)
  assert "**Failed** (exit 2)" in body and "unrecognized arguments" in body
