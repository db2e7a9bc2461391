"""Frechet Inception Distance: streaming feature statistics, reference-statistics files,
and the distance itself (host numpy, float64).

  stats = FeatureStats(2048)
  for batch: stats.update(pool3_features)          # constant memory in N
  stats = FeatureStats.sum_of(all_processes)        # statistics add across processes
  mu, sigma = stats.mean_cov()                      # sigma with ddof=1, as np.cov
  fid = frechet_distance(mu, sigma, ref.mu, ref.sigma)

FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2). The trace of the square root is
taken as sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), a symmetric PSD matrix with the same
eigenvalues as S1 S2: no complex parts, no iterative sqrtm, tiny negative eigenvalues
(rounding) clipped to 0. Equals scipy.linalg.sqrtm's trace where that converges.

Reference file (.npz): mu (D,), sigma (D, D), n, network (the feature network's hash,
`nets.inception.network_hash`), source (free text: the images it was computed from).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Iterable

import numpy as np

FORMAT = "mergevq_jax.fid_reference.v1"
FEATURE_DIM = 2048


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """FID between two Gaussians (see the module docstring), in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"FID needs statistics of one dimension: mu {mu1.shape} vs "
                     f"{mu2.shape}, sigma {s1.shape} vs {s2.shape}")
  w, v = np.linalg.eigh((s1 + s1.T) / 2)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = root1 @ s2 @ root1
  eig = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sum(np.sqrt(eig)))


@dataclasses.dataclass
class FeatureStats:
  """Running sums of features in float64: n, sum (D,), sum of outer products (D, D)."""
  dim: int
  n: int = 0
  total: np.ndarray | None = None
  outer: np.ndarray | None = None

  def __post_init__(self):
    if self.total is None:
      self.total = np.zeros((self.dim,), np.float64)
      self.outer = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features: np.ndarray) -> None:
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[1] != self.dim:
      raise ValueError(f"features must be (N, {self.dim}), got {f.shape}")
    if not np.all(np.isfinite(f)):
      raise ValueError("features contain NaN or inf (are the images finite?)")
    self.n += f.shape[0]
    self.total += f.sum(axis=0)
    self.outer += f.T @ f

  @classmethod
  def sum_of(cls, parts: Iterable["FeatureStats"]) -> "FeatureStats":
    parts = list(parts)
    out = cls(parts[0].dim)
    for p in parts:
      out.n += p.n
      out.total += p.total
      out.outer += p.outer
    return out

  def as_arrays(self) -> np.ndarray:
    """One flat float64 vector [n, total, outer] (for an all-gather across processes)."""
    return np.concatenate([[float(self.n)], self.total, self.outer.reshape(-1)])

  @classmethod
  def from_arrays(cls, flat: np.ndarray, dim: int) -> "FeatureStats":
    flat = np.asarray(flat, np.float64)
    return cls(dim, int(round(flat[0])), flat[1:1 + dim].copy(),
               flat[1 + dim:].reshape(dim, dim).copy())

  def mean_cov(self, *, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) with sigma's ddof=1 (jobs warn about small N once: check_sample_size)."""
    if self.n < 2:
      raise ValueError(f"FID needs at least 2 {what}, got {self.n}")
    mu = self.total / self.n
    sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
    return mu, (sigma + sigma.T) / 2


def check_sample_size(n: int, dim: int, what: str = "images", warn: bool = True) -> list[str]:
  """The caveats of a small N (also issued with `warnings.warn` when `warn`)."""
  out = []
  if n <= dim:
    out.append(f"FID from {n} {what}: N <= {dim} (the feature dimension), so the covariance "
               f"is singular; the number is only comparable at equal N")
  if n < 2048:
    out.append(f"FID from {n} {what}: below 2,048 samples FID is strongly biased upwards; "
               f"papers report 50,000")
  for msg in out if warn else ():
    warnings.warn(msg, stacklevel=3)
  return out


@dataclasses.dataclass(frozen=True)
class Reference:
  """Reference statistics of a feature network."""
  mu: np.ndarray
  sigma: np.ndarray
  n: int
  network: str
  source: str = ""


def save_reference(path: str | os.PathLike, stats: FeatureStats, network: str,
                   source: str) -> Reference:
  """Write mu, sigma, n, network hash and source to `path` (.npz) and return them."""
  mu, sigma = stats.mean_cov(what="reference images")
  ref = Reference(mu, sigma, stats.n, network, source)
  with open(path, "wb") as f:
    np.savez(f, mu=mu, sigma=sigma, n=np.int64(stats.n), network=np.str_(network),
             source=np.str_(source), format=np.str_(FORMAT))
  return ref


def load_reference(path: str | os.PathLike, *, network: str | None,
                   dim: int = FEATURE_DIM) -> Reference:
  """Reference statistics from an .npz (ours, or pytorch-fid / ADM-style files with mu and
  sigma only). Checks the dimension and, when both are known, the feature network's hash;
  raises ValueError naming the file and the key."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FID reference statistics not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except Exception as e:
    raise ValueError(f"{path}: not a readable .npz of FID statistics "
                     f"({type(e).__name__}: {e})") from e
  for key in ("mu", "sigma"):
    if key not in data:
      raise ValueError(f"{path}: no '{key}' array (keys: {sorted(data)}); reference "
                       f"statistics need mu and sigma")
  mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
  if mu.shape != (dim,) or sigma.shape != (dim, dim):
    raise ValueError(f"{path}: statistics of dimension mu {mu.shape}, sigma {sigma.shape}; "
                     f"this feature network gives {dim} (pool3 of the FID Inception)")
  file_net = str(data["network"]) if "network" in data else ""
  if network and file_net and file_net != network:
    raise ValueError(f"{path}: computed with feature network {file_net}, but the loaded "
                     f"network is {network}; recompute the reference with this network")
  if not file_net:
    warnings.warn(f"{path}: no feature-network hash in the file; assuming it was computed "
                  f"with the TF FID Inception and its preprocessing", stacklevel=2)
  n = int(data["n"]) if "n" in data else 0
  return Reference(mu, sigma, n, file_net, str(data.get("source", "")))
