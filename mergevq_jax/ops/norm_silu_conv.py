"""conv(SiLU(GroupNorm(x))) as one differentiable op that keeps only x for the backward.

Every ResBlock runs GroupNorm -> SiLU -> conv3x3 twice. Differentiated layer by layer,
each of these keeps three full-resolution maps alive until the backward pass (the norm's
input, the norm's output for SiLU's derivative, SiLU's output for the conv's kernel
gradient); at 256 x 256 x 64 and batch 4 that is 64 MB each, for eight blocks of the
encoder and the decoder at that resolution. This op keeps only x (and (B, C) statistics)
and recomputes the norm and the activation inside the backward pass, where they fuse into
work that reads x anyway. `jax.checkpoint` cannot do this on XLA:CPU: its scheduler runs
the recomputation early, in the forward pass, and the memory is used again.

Conv: stride 1, zero 'SAME' padding, no bias (as in the ResBlock); NHWC / HWIO. The
kernel gradient is `conv.kernel_grad` (banded, the activation recomputed band by band) on
the config platform 'cpu'; on any other, the activation is recomputed whole and XLA's own
kernel gradient is used.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mergevq_jax.ops import conv as conv_lib
from mergevq_jax.ops import group_norm as gn


def _pads(kernel) -> tuple[tuple[int, int], tuple[int, int]]:
  kh, kw = kernel.shape[:2]
  return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))


def _conv(a, kernel):
  return conv_lib.lax_conv(a, kernel, (1, 1), _pads(kernel))


def _normalised(x, a, shift):
  """x * a + shift in float32 for a band or a whole map; a, shift (B, C) float32."""
  return x.astype(jnp.float32) * gn.per_channel(a, x.ndim) + gn.per_channel(shift, x.ndim)


def _activation(x, a, shift, dtype):
  return jax.nn.silu(_normalised(x, a, shift)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def norm_silu_conv(x: jax.Array, scale: jax.Array, bias: jax.Array, kernel: jax.Array,
                   num_groups: int, eps: float, platform: str | None = None
                   ) -> jax.Array:
  """x (B, H, W, C_in) -> (B, H, W, C_out); scale, bias (C_in,); kernel (k, k, C_in, C_out).

  The result has the dtype of `kernel` (the compute dtype); norm statistics are float32.
  `platform` (the config's) selects the kernel gradient's implementation.
  """
  return _fwd(x, scale, bias, kernel, num_groups, eps, platform)[0]


def _fwd(x, scale, bias, kernel, num_groups, eps, platform):
  del platform  # the forward pass is the same everywhere
  pivot, mean, inv = gn.moments(x.astype(jnp.float32), num_groups, eps)
  a, shift = gn.coefficients(scale, bias, mean, inv)
  y = _conv(_activation(x, a, shift, kernel.dtype), kernel)
  return y, (x, scale, bias, kernel, pivot, mean, inv)


def _bwd(num_groups, eps, platform, residuals, dy):
  x, scale, bias, kernel, pivot, mean, inv = residuals
  # Tie the recomputation to dy so that XLA cannot schedule it in the forward pass.
  x, dy = lax.optimization_barrier((x, dy))
  a, shift = gn.coefficients(scale, bias, mean, inv)
  act_shape = jax.ShapeDtypeStruct(x.shape, kernel.dtype)
  (d_act,) = jax.linear_transpose(lambda v: _conv(v, kernel), act_shape)(dy)
  z = _normalised(x, a, shift)
  sig = jax.nn.sigmoid(z)
  dz = d_act.astype(jnp.float32) * (sig * (1.0 + z * (1.0 - sig)))   # SiLU'
  dx, dscale, dbias = gn.group_norm_bwd(num_groups, eps, (x, scale, bias, pivot, mean, inv),
                                        dz)
  if platform == conv_lib.CPU:
    dk = conv_lib.kernel_grad(x, dy, kernel.shape, (1, 1), _pads(kernel),
                              band_fn=lambda band: _activation(band, a, shift, kernel.dtype))
  else:  # cuDNN / TPU convs: recompute the activation whole and use XLA's kernel gradient
    act = _activation(x, a, shift, kernel.dtype)
    (dk,) = jax.linear_transpose(lambda k: _conv(act, k),
                                 jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))(dy)
  return dx, dscale, dbias, dk.astype(kernel.dtype)


norm_silu_conv.defvjp(_fwd, _bwd)
