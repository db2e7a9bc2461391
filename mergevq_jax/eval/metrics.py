"""Image-quality metrics as pure functions of images in [-1, 1], NHWC."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def psnr(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Mean PSNR in dB over the batch for images in [-1, 1] (clipped to the range)."""
  x = (jnp.clip(recon.astype(jnp.float32), -1, 1) + 1) / 2
  y = (jnp.clip(target.astype(jnp.float32), -1, 1) + 1) / 2
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)))
