"""Inception Score (Salimans et al. 2016), streamed over batches in float64.

IS = exp(E_x KL(p(y|x) || p(y))) per split, mean and standard deviation over `splits`
consecutive splits of the N samples (10 in the original code), p(y|x) the softmax of the
FID Inception's unbiased 1008-way logits. Sample i belongs to split i * splits // N, so N
is fixed up front. Per split the KL mean is
  (1/n) sum_i sum_y p_iy log p_iy  -  sum_y pbar_y log pbar_y,   pbar = (1/n) sum_i p_i,
which needs only running sums: constant memory in N.
"""
from __future__ import annotations

import numpy as np


class InceptionScore:
  """Accumulates softmax statistics of N samples in order; `result()` -> (mean, std)."""

  def __init__(self, num_samples: int, splits: int = 10):
    if splits < 1 or num_samples < splits:
      raise ValueError(f"Inception Score needs at least one sample per split: "
                       f"{num_samples} samples, {splits} splits")
    self.num_samples, self.splits = num_samples, splits
    self.seen = 0
    self.count = np.zeros((splits,), np.int64)
    self.neg_entropy = np.zeros((splits,), np.float64)   # sum_i sum_y p log p
    self.prob_sum: np.ndarray | None = None               # (splits, classes)

  def update(self, logits: np.ndarray, start: int | None = None) -> None:
    """Add the samples `start .. start + len(logits)` (default: the next ones)."""
    logits = np.asarray(logits, np.float64)
    start = self.seen if start is None else start
    if start + logits.shape[0] > self.num_samples:
      raise ValueError(f"more than the declared {self.num_samples} samples")
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    if self.prob_sum is None:
      self.prob_sum = np.zeros((self.splits, p.shape[1]), np.float64)
    split = (np.arange(start, start + p.shape[0]) * self.splits) // self.num_samples
    np.add.at(self.count, split, 1)
    np.add.at(self.neg_entropy, split, np.sum(p * logp, axis=1))
    np.add.at(self.prob_sum, split, p)
    self.seen = max(self.seen, start + p.shape[0])

  def merge(self, other: "InceptionScore") -> None:
    """Add another accumulator's sums (its samples must be disjoint from ours)."""
    self.count += other.count
    self.neg_entropy += other.neg_entropy
    if other.prob_sum is not None:
      self.prob_sum = other.prob_sum.copy() if self.prob_sum is None else (
          self.prob_sum + other.prob_sum)
    self.seen = max(self.seen, other.seen)

  def result(self) -> tuple[float, float]:
    if int(self.count.sum()) != self.num_samples:
      raise ValueError(f"Inception Score declared {self.num_samples} samples, got "
                       f"{int(self.count.sum())}")
    pbar = self.prob_sum / self.count[:, None]
    kl = self.neg_entropy / self.count - np.sum(pbar * np.log(np.maximum(pbar, 1e-300)),
                                                axis=1)
    scores = np.exp(kl)
    return float(scores.mean()), float(scores.std())
