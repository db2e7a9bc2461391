"""Evaluation metrics against independent references: FID against scipy's sqrtm and the
two-pass mean / covariance, streamed statistics against all-at-once numpy, IS against its
definition, SSIM against scikit-image, PSNR against its formula; reference files and
their checks. No network weights needed."""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mergevq_jax.eval import fid, metrics
from mergevq_jax.eval.inception_score import InceptionScore


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or 2 * d))
  return a @ a.T / a.shape[1]


def _scipy_fid(mu1, s1, mu2, s2):
  """pytorch-fid's formula: scipy sqrtm of the product, real part of its trace."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = covmean.real if np.iscomplexobj(covmean) else covmean
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_frechet_distance_matches_scipy_sqrtm(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  ours, ref = fid.frechet_distance(mu1, s1, mu2, s2), _scipy_fid(mu1, s1, mu2, s2)
  assert ours == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_frechet_distance_of_singular_covariances_is_finite_and_matches_scipy():
  """N < D (a singular covariance, as at small N): our eigen-route stays real; scipy
  agrees up to its own rounding."""
  rng = np.random.default_rng(0)
  d = 64
  s1, s2 = _random_cov(rng, d, rank=20), _random_cov(rng, d, rank=30)
  mu = np.zeros(d)
  ours = fid.frechet_distance(mu, s1, mu, s2)
  assert np.isfinite(ours) and ours > 0
  assert ours == pytest.approx(_scipy_fid(mu, s1, mu, s2), rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
  st = fid.FeatureStats(32)
  st.update(feats)
  mu, sigma = st.mean_cov()
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9
  values = []
  for noise in (0.1, 0.3, 1.0, 3.0):
    other = fid.FeatureStats(32)
    other.update(feats + noise * rng.normal(size=feats.shape))
    values.append(fid.frechet_distance(*other.mean_cov(), mu, sigma))
  assert all(a < b for a, b in zip(values, values[1:])), values


def test_streamed_statistics_equal_numpy_on_all_features():
  """Batches of any size, and statistics summed over 'processes', give np.mean / np.cov."""
  rng = np.random.default_rng(2)
  feats = rng.normal(3.0, 2.0, size=(103, 16))
  parts = []
  for lo, hi in ((0, 1), (1, 40), (40, 103)):
    p = fid.FeatureStats(16)
    for s in range(lo, hi, 7):
      p.update(feats[s:min(s + 7, hi)])
    parts.append(fid.FeatureStats.from_arrays(p.as_arrays(), 16))
  mu, sigma = fid.FeatureStats.sum_of(parts).mean_cov()
  np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-12)


def test_feature_stats_reject_bad_features():
  st = fid.FeatureStats(4)
  with pytest.raises(ValueError, match=r"\(N, 4\)"):
    st.update(np.zeros((2, 5)))
  with pytest.raises(ValueError, match="NaN"):
    st.update(np.full((2, 4), np.nan))
  st.update(np.zeros((1, 4)))
  with pytest.raises(ValueError, match="at least 2"):
    st.mean_cov()


def test_small_sample_warnings():
  with pytest.warns(UserWarning) as record:
    msgs = fid.check_sample_size(100, 2048)
  assert len(msgs) == 2 and "singular" in msgs[0] and "biased" in msgs[1]
  assert len(record) == 2
  with pytest.warns(UserWarning, match="biased"):
    assert len(fid.check_sample_size(2000, 1000)) == 1
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert fid.check_sample_size(50_000, 2048) == []


def test_reference_file_round_trip_and_checks(tmp_path):
  rng = np.random.default_rng(3)
  st = fid.FeatureStats(fid.FEATURE_DIM)
  st.update(rng.normal(size=(4, fid.FEATURE_DIM)))
  path = tmp_path / "ref.npz"
  saved = fid.save_reference(path, st, "abc123", "4 random vectors")
  ref = fid.load_reference(path, network="abc123")
  np.testing.assert_array_equal(ref.mu, saved.mu)
  np.testing.assert_array_equal(ref.sigma, saved.sigma)
  assert (ref.n, ref.network, ref.source) == (4, "abc123", "4 random vectors")
  with pytest.raises(ValueError, match="feature network abc123.*other"):
    fid.load_reference(path, network="other")
  small = tmp_path / "small.npz"
  np.savez(small, mu=np.zeros(64), sigma=np.eye(64))
  with pytest.raises(ValueError, match=r"small.npz.*dimension.*\(64,\).*2048"):
    fid.load_reference(small, network="abc123")
  nomu = tmp_path / "nomu.npz"
  np.savez(nomu, sigma=np.eye(2048))
  with pytest.raises(ValueError, match="nomu.npz: no 'mu'"):
    fid.load_reference(nomu, network=None)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    fid.load_reference(tmp_path / "missing.npz", network=None)
  # pytorch-fid / ADM files hold mu and sigma only: accepted, with a warning
  bare = tmp_path / "bare.npz"
  np.savez(bare, mu=np.zeros(2048), sigma=np.eye(2048))
  with pytest.warns(UserWarning, match="no feature-network hash"):
    assert fid.load_reference(bare, network="abc123").network == ""


def _is_reference(logits, splits):
  """The original IS code: softmax, split in order, exp(mean KL(p(y|x) || p(y)))."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for part in np.array_split(p, splits):
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_streamed_equals_the_definition():
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 3, size=(200, 50))
  score = InceptionScore(200, splits=10)
  for s in range(0, 200, 33):
    score.update(logits[s:s + 33])
  np.testing.assert_allclose(score.result(), _is_reference(logits, 10), rtol=1e-10)
  # two 'processes' with strided samples, merged
  a, b = InceptionScore(200, 10), InceptionScore(200, 10)
  for i in range(200):
    (a if i % 2 == 0 else b).update(logits[i:i + 1], start=i)
  a.merge(b)
  np.testing.assert_allclose(a.result(), _is_reference(logits, 10), rtol=1e-10)


def test_inception_score_bounds():
  uniform = InceptionScore(40, splits=4)
  uniform.update(np.zeros((40, 1008)))
  assert uniform.result()[0] == pytest.approx(1.0)
  confident = InceptionScore(40, splits=4)   # each split: 10 distinct confident classes
  confident.update(200.0 * np.eye(1008)[np.arange(40) % 10])
  assert confident.result()[0] == pytest.approx(10.0, rel=1e-6)
  with pytest.raises(ValueError, match="declared 40 samples, got 10"):
    s = InceptionScore(40, splits=4)
    s.update(np.zeros((10, 8)))
    s.result()
  with pytest.raises(ValueError, match="one sample per split"):
    InceptionScore(5, splits=10)


def test_ssim_matches_scikit_image():
  from skimage.metrics import structural_similarity
  rng = np.random.default_rng(5)
  x = rng.uniform(-1, 1, (3, 40, 33, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  y[2] = x[2]
  ours = np.asarray(metrics.ssim_per_image(jnp.asarray(y), jnp.asarray(x)))
  ref = [structural_similarity((x[i] + 1) / 2, (y[i] + 1) / 2, channel_axis=-1, data_range=1,
                               gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False) for i in range(3)]
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert ours[2] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim_per_image(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


def test_psnr_formula():
  x = jnp.zeros((2, 8, 8, 3))
  y = x.at[1].set(0.2)     # [0, 1] difference 0.1 -> MSE 0.01 -> 20 dB
  per = np.asarray(metrics.psnr_per_image(y, x))
  assert per[0] == pytest.approx(100.0) and per[1] == pytest.approx(20.0, rel=1e-5)
