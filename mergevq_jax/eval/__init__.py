"""Evaluation: image metrics (PSNR, SSIM), codebook statistics, FID statistics and the
Frechet distance, Inception Score, the evaluation networks on a mesh, the reconstruction
and generation evaluations, their jobs (`python -m mergevq_jax.evaluate`), FID reference
statistics and the linear probe. See docs/evaluation.md."""
