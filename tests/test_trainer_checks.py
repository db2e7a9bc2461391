"""Bad training setups fail with a clear ValueError before anything is compiled."""
import time

import pytest

from mergevq_jax.train.tokenizer_trainer import sample_num_keep, train

from conftest import load_config


def expect_error(cfg, tmp_path, match):
  t0 = time.time()
  with pytest.raises(ValueError, match=match):
    train(cfg, str(tmp_path / "run"))
  assert time.time() - t0 < 30  # failed at the checks, not after compiling a step


def test_missing_data_directory(tmp_path):
  cfg = load_config("demo_cpu")
  cfg.data.source, cfg.data.path = "folder", str(tmp_path / "nowhere")
  expect_error(cfg, tmp_path, "nowhere")


def test_empty_data_directory(tmp_path):
  (tmp_path / "empty").mkdir()
  cfg = load_config("demo_cpu")
  cfg.data.source, cfg.data.path = "folder", str(tmp_path / "empty")
  expect_error(cfg, tmp_path, "empty")


def test_missing_weight_files(tmp_path):
  for key in ("lpips_path", "teacher_path"):
    cfg = load_config("demo_cpu")
    cfg.loss[key] = str(tmp_path / "weights.pth")
    expect_error(cfg, tmp_path, f"loss.{key}.*weights.pth")


def test_teacher_needs_align_views(tmp_path):
  weights = tmp_path / "dinov2.npz"
  weights.write_bytes(b"")
  cfg = load_config("demo_cpu")
  cfg.loss.teacher_path = str(weights)
  with pytest.raises(ValueError):  # unreadable file or missing views: both named
    train(cfg, str(tmp_path / "run"))


def test_batch_and_k_candidates(tmp_path):
  cfg = load_config("demo_cpu")
  cfg.train.batch_size, cfg.train.accum_steps = 8, 3
  expect_error(cfg, tmp_path, "accum_steps")
  cfg = load_config("demo_cpu")
  cfg.model.keep_candidates, cfg.model.keep_probs = (36, 2), (0.5, 0.5)
  expect_error(cfg, tmp_path, "not reachable")
  cfg = load_config("demo_cpu")
  cfg.loss.pixel = "l3"
  expect_error(cfg, tmp_path, "l1")


def test_k_sampling_is_deterministic_and_follows_the_probabilities():
  cfg = load_config("tokenizer_gr")
  draws = [sample_num_keep(cfg, step) for step in range(3000)]
  assert draws[:50] == [sample_num_keep(cfg, step) for step in range(50)]
  assert set(draws) <= set(cfg.model.keep_candidates)
  assert 0.62 < draws.count(144) / len(draws) < 0.72  # p(144) = 0.668
