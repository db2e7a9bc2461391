"""Image-quality metrics as pure functions of images in [-1, 1], NHWC.

Per-image values (`*_per_image`, shape (B,)) are what an evaluation over many batches
averages; `psnr` and `ssim` return the batch mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# SSIM of Wang et al. 2004 as scikit-image computes it with
# structural_similarity(x, y, channel_axis=-1, data_range=1, gaussian_weights=True,
#                       sigma=1.5, use_sample_covariance=False):
# 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 0.01, K2 0.03, the mean of
# the SSIM map over the pixels whose window lies inside the image, averaged over channels.
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03


def _unit(x: jax.Array) -> jax.Array:
  return (jnp.clip(x.astype(jnp.float32), -1, 1) + 1) / 2


def psnr_per_image(recon: jax.Array, target: jax.Array) -> jax.Array:
  """(B,) PSNR in dB for images in [-1, 1] (clipped to the range; data range 1 in [0, 1])."""
  mse = jnp.mean(jnp.square(_unit(recon) - _unit(target)), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def psnr(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Mean PSNR in dB over the batch for images in [-1, 1] (clipped to the range)."""
  return jnp.mean(psnr_per_image(recon, target))


def _gaussian_taps() -> np.ndarray:
  radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
  return (w / w.sum()).astype(np.float32)


def _window_mean(x: jax.Array) -> jax.Array:
  """Separable Gaussian window mean of (B, H, W, C), 'valid' (no padded pixels)."""
  taps = jnp.asarray(_gaussian_taps())
  k = taps.shape[0]
  h = x.shape[1] - k + 1
  x = sum(taps[i] * x[:, i:i + h] for i in range(k))
  w = x.shape[2] - k + 1
  return sum(taps[i] * x[:, :, i:i + w] for i in range(k))


def ssim_per_image(recon: jax.Array, target: jax.Array) -> jax.Array:
  """(B,) SSIM of images in [-1, 1] (compared in [0, 1]); needs H, W >= 11."""
  if recon.shape != target.shape or recon.ndim != 4:
    raise ValueError(f"SSIM takes two (B, H, W, C) images of equal shape, got "
                     f"{recon.shape} and {target.shape}")
  k = _gaussian_taps().shape[0]
  if min(recon.shape[1:3]) < k:
    raise ValueError(f"SSIM's {k}x{k} window needs images of at least {k}x{k}, got "
                     f"{recon.shape[1]}x{recon.shape[2]}")
  x, y = _unit(recon), _unit(target)
  mx, my = _window_mean(x), _window_mean(y)
  vx = _window_mean(x * x) - mx * mx
  vy = _window_mean(y * y) - my * my
  cxy = _window_mean(x * y) - mx * my
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def ssim(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Mean SSIM over the batch (see `ssim_per_image`)."""
  return jnp.mean(ssim_per_image(recon, target))
