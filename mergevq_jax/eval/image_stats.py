"""Inception statistics of real images (eval views), for FID references."""
from __future__ import annotations

from mergevq_jax.eval import batches, fid
from mergevq_jax.progress import Progress


def image_stats(nets, source, image_size: int, num_images: int, batch: int,
                progress: bool = True) -> fid.FeatureStats:
  """Inception statistics of the first `num_images` (0: all) eval views of `source`,
  split over devices and processes, summed over processes."""
  n = len(source) if num_images <= 0 else min(num_images, len(source))
  stats = fid.FeatureStats(fid.FEATURE_DIM)
  mine = batches.process_slice(n)
  batch = batches.fit_batch(batch, n, nets.mesh)
  bar = Progress(len(mine), unit="image", label="reference") if progress else None
  for images, k, _ in batches.eval_view_batches(source, mine, image_size, batch,
                                                batches.num_batches(n, batch)):
    out = nets.features(batches.to_global(images, nets.mesh))
    stats.update(batches.local_rows(out["pool3"])[:k])
    if bar is not None:
      bar.update(k)
  if bar is not None:
    bar.close()
  return fid.FeatureStats.from_arrays(batches.sum_across_processes(stats.as_arrays()),
                                      stats.dim)
