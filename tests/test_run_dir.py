"""A run directory nobody can corrupt: one job per run (a lock), a config that never changes
under its checkpoints (config_history instead), Ctrl-C and SIGTERM save, progress lines
in logs."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mergevq_jax import run_dir
from mergevq_jax.progress import Progress
from mergevq_jax.train.loop import Interrupts

from conftest import ROOT, load_config

HOLD = ("import sys, time; from mergevq_jax.run_dir import RunLock; "
        "RunLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(120)")


def hold_lock(workdir):
  """A process holding the run's lock (until killed)."""
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return p


def test_a_second_job_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
  holder = hold_lock(tmp_path)
  assert holder.stdout.readline().strip() == "locked"
  try:
    with pytest.raises(run_dir.RunInUse, match=rf"in use by pid {holder.pid} on host "
                                               rf"{socket.gethostname()} since "):
      with run_dir.RunLock(str(tmp_path)):
        pass
    # The training CLI says the same in one line, before building anything.
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "mergevq_jax.main",
                          "--config=configs/demo_cpu.py", f"--workdir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and time.time() - t0 < 60
    assert out.stderr.strip().count("\n") == 0
    assert f"is in use by pid {holder.pid}" in out.stderr
  finally:
    holder.kill()
    holder.wait()
  with run_dir.RunLock(str(tmp_path)):                       # the holder died: free
    record = json.loads((tmp_path / "lock").read_text())
    assert record["pid"] == os.getpid()
    with run_dir.RunLock(str(tmp_path)):                     # re-entrant in one process
      pass
    assert (tmp_path / "lock").read_text()                   # still held
  assert f"taking over the lock of pid {holder.pid}" in capsys.readouterr().err
  assert (tmp_path / "lock").read_text() == ""               # released cleanly


def test_two_jobs_started_together_one_wins(tmp_path):
  procs = [hold_lock(tmp_path) for _ in range(2)]
  try:
    outs = [p.stdout.readline().strip() for p in procs]
    assert sorted(outs) == ["", "locked"]
    loser = procs[outs.index("")]
    loser.wait(timeout=60)
    assert loser.returncode != 0 and "in use by pid" in loser.stderr.read()
  finally:
    for p in procs:
      p.kill()
      p.wait()


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    run_dir.check_workdir(str(tmp_path / "f" / "run"))


def test_history_records_allowed_changes_and_load_config_applies_the_latest(tmp_path):
  workdir = str(tmp_path)
  cfg = load_config("tokenizer_tiny")
  run_dir.record_start(workdir, cfg, 0, resumed=False)
  cfg.train.steps, cfg.data.path, cfg.model.num_keep = 400, "/data/photos", 49
  assert run_dir.check_resumable(workdir, cfg, 100) == {
      "data.path": ["", "/data/photos"], "model.num_keep": [36, 49], "train.steps": [200, 400]}
  stored = (tmp_path / "config.json").read_bytes()
  run_dir.record_start(workdir, cfg, 100, resumed=True)
  assert (tmp_path / "config.json").read_bytes() == stored        # never rewritten
  history = run_dir.read_history(workdir)
  assert [(e["event"], e["step"]) for e in history] == [("start", 0), ("resume", 100)]
  loaded = run_dir.load_config(workdir)
  assert (loaded.train.steps, loaded.data.path, loaded.model.ch_mult) == (
      400, "/data/photos", (1, 1, 2, 2))
  cfg.model.ch, cfg.disc.num_layers = 64, 2
  with pytest.raises(ValueError, match=r"another architecture: disc.num_layers=3 in the run, "
                                       r"2 requested; model.ch=32 in the run, 64 requested"):
    run_dir.check_resumable(workdir, cfg, 100)


def test_interrupts_first_ctrl_c_asks_to_save_the_second_stops():
  previous = signal.getsignal(signal.SIGINT)
  with Interrupts() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == "SIGTERM"
  with Interrupts() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGINT"
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is previous        # handlers given back


def test_progress_lines_without_a_terminal():
  stream = io.StringIO()
  p = Progress(10, initial=2, label="train", every_s=3600, stream=stream, tty=False)
  for _ in range(8):
    p.set_postfix(loss="0.5")
    p.update(1)
  p.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 2                                     # the first step and the end
  assert lines[0].startswith("train: step 3/10 (30.0%)") and "ETA" in lines[0]
  assert lines[1].startswith("train: step 10/10 (100.0%)") and "took" in lines[1]
  assert lines[1].endswith("| loss=0.5")


# The demo, shrunk to compile fast (one ToMe block, one K, no recovery or discriminator).
SMALL = ["--config=configs/demo_cpu.py", "--config.model.image_size=16",
         "--config.model.ch_mult=(1,2)", "--config.model.num_layers=1",
         "--config.model.keep_candidates=(36,)", "--config.model.keep_probs=(1.0,)",
         "--config.model.recovery.enabled=False", "--config.disc.enabled=False",
         "--config.train.batch_size=2", "--config.data.eval_images=1",
         "--config.train.log_every=1", "--config.train.eval_every=1000000",
         "--config.train.ckpt_every=1000000", "--config.train.steps=1000",  # stage 2 stays on
         "--config.eval.num_images=0", "--config.stage2.gfid_samples=0"]  # no evaluation


def start_training(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "mergevq_jax.main", *SMALL, *extra,
                           f"--workdir={workdir}"], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def logged_losses(workdir) -> dict[int, float]:
  """step -> the logged generator loss, from metrics.jsonl (empty before the first log)."""
  path = workdir / "metrics.jsonl"
  records = [json.loads(line) for line in (path.read_text().splitlines()
                                           if path.exists() else [])]
  return {r["step"]: r["train/g_total"] for r in records if "train/g_total" in r}


def training_until(workdir, step, *extra):
  """A training job that has logged `step` (and is still running)."""
  p = start_training(workdir, *extra)
  deadline = time.time() + 400
  while (time.time() < deadline and p.poll() is None
         and max(logged_losses(workdir), default=0) < step):
    time.sleep(0.2)
  assert p.poll() is None, p.communicate()
  return p


def test_ctrl_c_and_sigterm_save_end_the_job_and_the_restarts_continue_identically(tmp_path):
  split = tmp_path / "split"
  constant_lr = "--config.train.lr_drops=()"   # the schedule does not depend on train.steps
  # Ctrl-C: a checkpoint at the next step, exit 130, stage 2 (MergeAR) never starts.
  p = training_until(split, 2, constant_lr)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 130, err
  summary = json.loads((split / "summary.json").read_text())
  s1 = summary["steps"]
  assert summary["stopped_by"] == "SIGINT" and 2 <= s1 < 1000
  assert f"SIGINT: checkpoint written at step {s1}" in err
  assert sorted(os.listdir(split / "checkpoints")) == [str(s1)]
  assert not (split / "codes").exists() and not (split / "mergear").exists()
  assert "train: step 1/1000" in err                         # progress without a terminal
  assert (split / "lock").read_text() == ""
  # SIGTERM (preemption) after the restart: the same, exit 0.
  p = training_until(split, s1 + 2, constant_lr)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  summary = json.loads((split / "summary.json").read_text())
  s2 = summary["steps"]
  assert (summary["stopped_by"], summary["start_step"]) == ("SIGTERM", s1) and s2 > s1
  assert f"SIGTERM: checkpoint written at step {s2}" in err
  # Finish both the interrupted run and an uninterrupted one at s2 + 2 steps.
  finish = [constant_lr, f"--config.train.steps={s2 + 2}", "--config.stage2.mergear_config="]
  for workdir in (split, tmp_path / "straight"):
    out = start_training(workdir, *finish)
    _, err = out.communicate(timeout=600)
    assert out.returncode == 0, err[-3000:]
  history = run_dir.read_history(str(split))
  assert [(e["event"], e["step"]) for e in history] == [("start", 0), ("resume", s1),
                                                        ("resume", s2)]
  assert set(history[2]["changes"]) == {"train.steps", "stage2.mergear_config"}
  a, b = logged_losses(split), logged_losses(tmp_path / "straight")
  assert sorted(a) == sorted(b) == list(range(1, s2 + 3))  # each step logged once
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-5)
