"""gFID (and IS where the Inception weights have the classifier) of MergeAR samples.

N samples, class-balanced (sample i has class i mod num_classes), generated batch by batch
by each process for its own indices (`batches.process_slice`), decoded by the tokenizer,
and reduced to Inception statistics as they come: memory does not grow with N.
Reference statistics: a `fid.Reference` (a file), or computed here from real images.
"""
from __future__ import annotations

import jax
import numpy as np

from mergevq_jax import sharding
from mergevq_jax.eval import batches, fid
from mergevq_jax.eval.inception_score import InceptionScore
from mergevq_jax.progress import Progress


def evaluate_samples(generator, decode, nets, key, *, num_samples: int, num_classes: int,
                     num_keep: int, batch: int, reference: tuple[np.ndarray, np.ndarray],
                     is_splits: int = 10, keep_grid: int = 0, progress: bool = True,
                     **sampling) -> tuple[dict, np.ndarray | None]:
  """({'gfid', 'inception_score' (mean, std) or None, 'num_samples', 'seconds_*'}, the
  first `keep_grid` samples of process 0 (n, H, W, 3) or None).

  generator(key, class_ids, num_keep, **sampling) -> (codes, stats); decode(codes) ->
  images in [-1, 1]; both run inside the mesh (class ids are a global array split over
  its batch axes, as `Generator` takes them). `batch`: samples per process per call
  (padded at the end); the key of batch j is fold_in(key, j).
  """
  import time
  stats = fid.FeatureStats(fid.FEATURE_DIM)
  score = InceptionScore(num_samples, is_splits) if nets.has_logits else None
  mine = list(batches.process_slice(num_samples))
  batch = batches.fit_batch(batch, num_samples, nets.mesh)
  shown = []
  bar = Progress(len(mine), unit="sample", label="generate") if progress else None
  t_gen = t_feat = 0.0
  for j in range(batches.num_batches(num_samples, batch)):   # the same count everywhere
    start = j * batch
    idx = np.asarray(mine[start:start + batch], np.int64)
    n = len(idx)
    ids = np.resize(idx % num_classes, batch) if n else np.zeros(batch, np.int64)
    ids = batches.to_global(ids.astype(np.int32), nets.mesh)
    t0 = time.time()
    with sharding.use_mesh(nets.mesh):   # generation and decoding split over the batch
      codes, _ = generator(jax.random.fold_in(key, j), ids, num_keep, **sampling)
      images = decode(codes)
    t1 = time.time()
    out = nets.features(images)
    stats.update(batches.local_rows(out["pool3"])[:n])
    if score is not None:
      logits = batches.local_rows(out["logits"])[:n]
      if score.prob_sum is None:   # also on a process without samples (sums must align)
        score.prob_sum = np.zeros((is_splits, out["logits"].shape[1]), np.float64)
      for r, i in enumerate(idx):   # strided indices: each sample lands in its own split
        score.update(logits[r:r + 1], start=int(i))
    t_feat += time.time() - t1
    t_gen += t1 - t0
    if len(shown) < keep_grid:
      shown.extend(batches.local_rows(images)[:min(n, keep_grid - len(shown))])
    if bar is not None:
      bar.update(n)
  if bar is not None:
    bar.close()
  total = fid.FeatureStats.from_arrays(batches.sum_across_processes(stats.as_arrays()),
                                       stats.dim)
  mu, sigma = total.mean_cov(what="samples")
  result = {"gfid": fid.frechet_distance(mu, sigma, *reference), "num_samples": total.n,
            "inception_score": None, "seconds_generate_decode": round(t_gen, 2),
            "seconds_inception": round(t_feat, 2)}
  if score is not None:
    if jax.process_count() > 1:
      flat = np.concatenate([score.count, score.neg_entropy, score.prob_sum.reshape(-1)])
      flat = batches.sum_across_processes(flat.astype(np.float64))
      s = is_splits
      score.count = flat[:s].round().astype(np.int64)
      score.neg_entropy = flat[s:2 * s]
      score.prob_sum = flat[2 * s:].reshape(s, -1)
    result["inception_score"] = list(score.result())
  return result, (np.stack(shown) if shown else None)
