"""Two JAX processes (launch/local.sh, gloo collectives) x 1 CPU device (every run) or x 4
(slow) train exactly what one process with twice the devices trains: the same global
batches (each process loads only its rows), the same losses and parameters; the run's
files are written once; the checkpoints restore in one process. Bad layouts, an
unreachable coordinator and a process that dies are one clear line each."""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mergevq_jax import pretrained

from conftest import ROOT

SMALL = ["--config.model.image_size=16", "--config.model.ch_mult=(1,2)",
         "--config.model.num_layers=1", "--config.model.keep_candidates=(36,)",
         "--config.model.keep_probs=(1.0,)", "--config.model.recovery.enabled=False",
         "--config.disc.enabled=False", "--config.train.batch_size=8", "--config.train.lr=1e-4",
         "--config.data.eval_images=8", "--config.train.log_every=1", "--config.train.steps=3",
         "--config.stage2.steps=3", "--config.stage2.views=1",
         "--config.eval.num_images=0", "--config.stage2.gfid_samples=0"]
# The held-out rFID / LPIPS evaluation on 5 photos (3 + 2 over two processes); no gFID (its
# sample order depends on the process count: nothing to compare).
HELDOUT = ["--config.eval.num_images=5", "--config.eval.batch_size=2"]


def main_job(*flags):
  return subprocess.run([sys.executable, "-m", "mergevq_jax.main", "--config=configs/demo_cpu.py",
                         *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address=localhost:1234", "--num_processes=2"],
     "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be below --num_processes=2"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=1"],
     "--coordinator_address must be HOST:PORT, got 'localhost'"),
])
def test_inconsistent_process_layout_is_one_line(tmp_path, flags, message):
  out = main_job(f"--workdir={tmp_path}", *flags)
  assert out.returncode == 2 and out.stderr.startswith(f"error: {message}"), out.stderr[-2000:]
  assert out.stderr.strip().count("\n") == 0


def test_unreachable_coordinator_is_a_timeout_with_a_clear_message(tmp_path):
  with socket.socket() as s:        # a port nobody listens on
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  t0 = time.time()
  out = main_job(f"--workdir={tmp_path}", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", "--process_id=1", "--join_timeout=2")
  assert out.returncode == 2 and time.time() - t0 < 60, out.stderr[-2000:]
  assert out.stderr.strip().startswith(f"error: no JAX coordinator at localhost:{port} after 2 s")


def launch(workdir, processes, devices, ar_config, port, extra=()):
  env = {**os.environ, "WORKDIR": str(workdir), "PORT": str(port),
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  out = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), "--processes", str(processes),
                        "--devices_per_process", str(devices), *SMALL, *extra,
                        f"--config.stage2.mergear_config={ar_config}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  logs = "".join(p.read_text() for p in (workdir / "logs").glob("*.log")) if (
      workdir / "logs").exists() else ""
  assert out.returncode == 0, (out.stderr + logs)[-4000:]


def losses(path, key):
  return {r["step"]: r[key] for r in map(json.loads, path.read_text().splitlines()) if key in r}


@pytest.mark.slow
def test_two_processes_x4_devices_train_what_one_process_x8_trains(tmp_path):
  two_processes_train_what_one_process_trains(tmp_path, 4, (23521, 23522), HELDOUT)


def test_two_processes_train_what_one_process_trains(tmp_path):
  """The same with one device per process against one process with two: fast enough for
  every test run (the 8-device programs above take minutes to compile and run here)."""
  two_processes_train_what_one_process_trains(tmp_path, 1, (23524, 23525))


@pytest.mark.slow
def test_two_processes_evaluate_what_one_process_evaluates(tmp_path):
  """The held-out evaluation (statistics summed over processes, padding batches where a
  process has fewer images) gives the same numbers on 2 processes as on 1 (~5 min)."""
  two_processes_train_what_one_process_trains(tmp_path, 1, (23526, 23527), HELDOUT)


def two_processes_train_what_one_process_trains(tmp_path, devices: int, ports, extra=()):
  ar_config = tmp_path / "mergear_small.py"   # no sample grids: nothing but training
  ar_config.write_text(
      "from mergevq_jax.config import load_config_file\n"
      "def get_config(platform=None):\n"
      f"  c = load_config_file({str(ROOT / 'configs' / 'mergear_tiny.py')!r}, platform)\n"
      "  c.model.width, c.model.num_layers, c.model.num_heads, c.model.ffn_dim = 64, 2, 2, 128\n"
      "  c.train.batch_size, c.train.sample_every, c.train.log_every = 8, 0, 1\n"
      "  return c\n")
  one, two = tmp_path / "one", tmp_path / "two"
  launch(one, 1, 2 * devices, ar_config, ports[0], extra)
  launch(two, 2, devices, ar_config, ports[1], extra)
  for sub, key in (("", "train/g_total"), ("mergear", "train/loss")):
    a, b = losses(one / sub / "metrics.jsonl", key), losses(two / sub / "metrics.jsonl", key)
    assert sorted(a) == sorted(b) == [1, 2, 3]           # each step logged once (process 0)
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-3)
  # The held-out evaluation sums its statistics over the processes: the same numbers
  # (when the eval extra's weights are installed; else the summary says they are not).
  held = [json.loads((d / "summary.json").read_text()) for d in (one, two)]
  if extra and held[0].get("heldout", {}).get("rfid_k36") is not None:
    for key in ("rfid_k36", "psnr_k36", "ssim_k36", "lpips_k36"):
      assert held[1]["heldout"][key] == pytest.approx(held[0]["heldout"][key], rel=1e-3), key
    assert held[0]["heldout"]["num_images"] == held[1]["heldout"]["num_images"] == 5
  # Each process tokenized its own rows into its own shard.
  assert sorted(p.name for p in (two / "codes").glob("shard-*.codes.npy")) == [
      "shard-00000-of-00002.codes.npy", "shard-00001-of-00002.codes.npy"]
  # The 2-process checkpoints restore in this (1-device) process and equal the 1-process ones.
  for load in (pretrained.load_tokenizer, pretrained.load_mergear):
    sub = "mergear" if load is pretrained.load_mergear else ""
    ma, _, step_a = load(str(one / sub))
    mb, _, step_b = load(str(two / sub))
    assert step_a == step_b == 3
    from flax import nnx
    for x, y in zip(jax.tree.leaves(nnx.state(ma)), jax.tree.leaves(nnx.state(mb))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)


def test_a_process_that_dies_stops_the_job_with_a_message(tmp_path):
  """kill -9 of process 1 once both joined: the launcher stops process 0 at once (it would
  wait in a collective until XLA's heartbeat timeout) and names the process."""
  import signal
  env = {**os.environ, "WORKDIR": str(tmp_path), "PORT": "23523",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  job = subprocess.Popen(["bash", str(ROOT / "launch" / "local.sh"), "--processes", "2",
                          *SMALL, "--config.train.steps=100000", "--config.stage2.mergear_config="],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
  try:
    deadline = time.time() + 240
    while not (tmp_path / "lock").exists():     # process 0 locks the run once both joined
      assert job.poll() is None and time.time() < deadline, job.communicate()[1][-3000:]
      time.sleep(0.5)
    found = subprocess.run(["pgrep", "-f", f"workdir={tmp_path} .*--process_id=1"],
                           capture_output=True, text=True).stdout.split()
    assert len(found) == 1, found
    os.kill(int(found[0]), signal.SIGKILL)
    t0 = time.time()
    _, err = job.communicate(timeout=60)
  finally:
    if job.poll() is None:
      job.kill()
  assert time.time() - t0 < 30 and job.returncode == 137, err[-3000:]
  assert (f"error: process 1 exited with status 137 (log: {tmp_path}/logs/process_1.log); "
          f"stopping the others") in err
  assert not subprocess.run(["pgrep", "-f", f"workdir={tmp_path} "], capture_output=True,
                            text=True).stdout.split()
