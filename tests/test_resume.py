"""Checkpoint/resume: 2N steps in one run == a run resumed from that run's step-N
checkpoint for N more steps."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from mergevq_jax import sharding
from mergevq_jax.checkpoint import Checkpointer
from mergevq_jax.nets import packaged
from mergevq_jax.train.tokenizer_state import abstract_state
from mergevq_jax.train.tokenizer_trainer import train

from test_train_step import small_config

N = 3


def run_config():
  cfg = small_config(steps=2 * N, log_every=1, eval_every=10 ** 6, ckpt_every=N)
  cfg.model.keep_candidates, cfg.model.keep_probs = (36, 49), (0.5, 0.5)
  cfg.loss.disc_start = 1  # the adversarial terms, the LeCAM EMA and D all take part
  cfg.data.eval_images = 2
  if packaged.find("inception") and packaged.find("lpips"):
    cfg.eval.num_images = 3        # the held-out rFID / LPIPS evaluation at the end
    cfg.eval.batch_size = 3
  return cfg


def final_state(workdir, cfg):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  abstract = abstract_state(cfg)
  shardings = sharding.state_shardings(abstract, mesh, sharding.DEFAULT_RULES)
  ckpt = Checkpointer(str(workdir), keep=3)
  state, meta = ckpt.restore(abstract, shardings)
  ckpt.close()
  return state, meta


def test_restart_equals_uninterrupted(tmp_path):
  cfg = run_config()
  straight = train(cfg, str(tmp_path / "straight"))
  # A job that died after its step-N checkpoint: the run directory as it was then (the
  # logs of later steps are still there, and are dropped by the resume).
  shutil.copytree(tmp_path / "straight", tmp_path / "split")
  shutil.rmtree(tmp_path / "split" / "checkpoints" / str(2 * N))
  resumed = cfg.copy_and_resolve_references()
  resumed.eval.num_images = 0    # the held-out evaluation is checked on the straight run
  second = train(resumed, str(tmp_path / "split"))
  assert second["start_step"] == N and second["steps"] == 2 * N == straight["steps"]
  a, meta_a = final_state(tmp_path / "straight", cfg)
  b, meta_b = final_state(tmp_path / "split", cfg)
  assert meta_a["step"] == meta_b["step"] == 2 * N
  records = map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines())
  assert [r["step"] for r in records if "train/g_total" in r] == list(range(1, 2 * N + 1))
  assert int(a.step) == int(b.step) == 2 * N
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  # the discriminator took part (its LeCAM anchors moved off zero)
  assert float(np.abs(np.asarray(a.lecam.real))) > 0
  # TensorBoard event files with the training scalars (tensorboardX is a dependency)
  events = list((tmp_path / "straight" / "tensorboard").glob("events.out.tfevents.*"))
  assert events and b"train/g_total" in events[0].read_bytes()
  if cfg.eval.num_images:   # held-out evaluation: summary, metrics.jsonl and TensorBoard
    held = straight["heldout"]
    assert held["num_images"] == 3 and "biased" in held["note"]
    for name in ("rfid_k36", "psnr_k36", "ssim_k36", "lpips_k36"):
      assert np.isfinite(held[name]), name
    records = [json.loads(line) for line in
               (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/heldout_rfid_k36" in r] == [2 * N]
    assert b"eval/heldout_lpips_k36" in events[0].read_bytes()
  # A resume that cannot work touches nothing: another architecture is refused by key
  # before anything is built; a mistyped data path fails at the data check.
  split = tmp_path / "split"
  kept = {f: (split / f).read_bytes() for f in ("config.json", "config_history.jsonl")}
  wider = run_config()
  wider.model.ch = 64
  with pytest.raises(ValueError, match=r"checkpoint of step 6\) of another architecture: "
                                       r"model.ch=32 in the run, 64 requested"):
    train(wider, str(split))
  typo = run_config()
  typo.data.source, typo.data.path = "folder", str(tmp_path / "imagenett")
  with pytest.raises(ValueError, match="imagenett"):
    train(typo, str(split))
  assert kept == {f: (split / f).read_bytes() for f in kept}
  assert sorted(os.listdir(split / "checkpoints")) == ["3", "6"]
