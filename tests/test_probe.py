"""Linear probe: a linearly separable signal is learned (> 95%), encoder features of real
labelled images (scikit-learn digits) beat chance by a wide margin, the features keep every
token, and the command writes probe.json."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mergevq_jax.eval import linear_probe as probe
from test_export import _save_run, _tok_config


def test_probe_learns_a_linearly_separable_signal():
  rng = np.random.default_rng(0)
  n, d, c = 900, 48, 6
  y = rng.integers(0, c, n)
  means = rng.normal(size=(c, d))
  x = 0.4 * rng.normal(size=(n, d)) + means[y] + 5.0   # offset: BatchNorm centres it
  r = probe.fit_linear_probe(x[:600], y[:600], x[600:], y[600:])
  assert r["test_accuracy"] > 0.95 and r["chance"] < 0.3, r
  # and nothing is learned from pure noise labels
  noise = probe.fit_linear_probe(x[:600], rng.integers(0, c, 600), x[600:],
                                 rng.integers(0, c, 300))
  assert noise["test_accuracy"] < 0.35, noise


def test_stratified_split_keeps_class_shares():
  labels = np.repeat(np.arange(3), [10, 20, 30])
  tr, te = probe.stratified_split(labels, 0.3, seed=1)
  assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == 60
  assert np.bincount(labels[te]).tolist() == [3, 6, 9]


def test_probe_features_keep_every_token(tiny_model, tiny_images):
  """cls / mean equal the transformer run with a zero merge schedule."""
  out = tiny_model.probe_features(tiny_images)
  x, state = tiny_model.encoder.transformer(tiny_images, (0,) * len(tiny_model.encoder.blocks))
  assert state.owner.shape == (2, tiny_model.num_tokens)
  np.testing.assert_array_equal(np.asarray(state.owner[0]), np.arange(tiny_model.num_tokens))
  np.testing.assert_allclose(np.asarray(out["cls"]), np.asarray(x[:, 0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["mean"]), np.asarray(x[:, 1:].mean(1)), atol=1e-6)


def test_digits_features_beat_chance_by_a_wide_margin(tiny_model):
  """Even an untrained encoder's features separate the 10 digits far above chance (10%):
  the pipeline (eval views, feature extraction, BatchNorm + linear) carries the signal."""
  src = probe.offline_set("digits")
  assert len(src) == 1797 and src[0]["image"].shape == (8, 8, 3)
  tr, te = probe.stratified_split(src.labels, 0.3)
  tr, te = tr[::5], te[::5]    # 252 / 108 images keep the test short
  f_tr, y_tr = probe.extract_features(tiny_model, src, tr, batch=60, progress=False)
  f_te, y_te = probe.extract_features(tiny_model, src, te, batch=60, progress=False)
  assert f_tr["cls"].shape == (len(tr), tiny_model.encoder.width)
  np.testing.assert_array_equal(y_tr, src.labels[tr])
  r = probe.fit_linear_probe(f_tr["mean"], y_tr, f_te["mean"], y_te)
  print(r)
  assert r["test_accuracy"] > 0.5, r


@pytest.mark.slow   # ~20 s; the probe itself is tested above
def test_probe_command_writes_probe_json(tmp_path):
  workdir = str(tmp_path / "run")
  _save_run(workdir, _tok_config())
  out = subprocess.run([sys.executable, "-m", "mergevq_jax.eval.probe", f"--workdir={workdir}",
                        "--source=lfw_subset", "--epochs=5", f"--out={tmp_path / 'p'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "p" / "probe.json").read_text())
  assert report["step"] == 7 and report["source"] == "lfw_subset"
  for name in ("cls", "mean"):
    r = report["features"][name]
    assert (r["num_train"], r["num_test"], r["num_classes"]) == (140, 60, 2)
    assert 0 <= r["test_accuracy"] <= 1
