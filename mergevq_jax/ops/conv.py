"""2-D convolution whose kernel gradient is fast on XLA:CPU.

XLA:CPU computes a conv's kernel gradient as one convolution whose "kernel" is the whole
output map (e.g. 256 x 256); it runs at ~40 GFLOP/s on 2 cores, while the forward conv and
the input gradient run near the ~315 GFLOP/s matmul peak. In a stage-1 training step
that one op took most of the time. `conv_general_dilated` here is a drop-in for
`jax.lax.conv_general_dilated` (it is passed to `nnx.Conv`) that keeps XLA's forward and
input gradient but computes the kernel gradient as a `lax.scan` over bands of output
rows: each band's input patches (B, rows, W_out, kh*kw, C_in) are small enough to stay in
cache and are contracted with the band's output gradient in one matmul (~195 GFLOP/s
for 3x3, 64 -> 64 at 256 x 256, batch 4).

A 1 x 1 conv's kernel gradient (stride 1, no padding) is one matmul over the whole map:
for 64 -> 128 channels at 64 x 64, batch 4, 2.1 ms against XLA's 6.3 ms in isolation
(24 ms inside the G+R training step).

`conv_general_dilated_for(platform)` is what a layer passes to `nnx.Conv`: this module's
conv for the config platform 'cpu', `lax.conv_general_dilated` for any other (cuDNN and
TPU convs have fast kernel gradients of their own). The custom path is taken for plain
NHWC/HWIO convs (no dilation, no feature groups); everything else is `lax`'s own conv.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CPU = "cpu"  # the config platform whose convs take this module's kernel gradient
# Name scope of every XLA:CPU-only kernel (it shows in the compiled HLO's op names): a
# program compiled for another platform must not contain it (tests/test_aot.py).
CPU_KERNEL_SCOPE = "xla_cpu_kernel"


def cpu_kernel(fn):
  """Trace `fn` under CPU_KERNEL_SCOPE."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.named_scope(CPU_KERNEL_SCOPE):
      return fn(*args, **kwargs)
  return wrapped
_NHWC = ("NHWC", "HWIO", "NHWC")
BAND_BYTES = 6 << 20  # patch bytes per scan step: fits in L2/L3 on typical CPUs
# Up to this many output channels the band's matmul is written dy^T @ patches (the result
# transposed at the end): XLA then transposes the small dy band for the GEMM instead of the
# 9x larger patches. 3x3 kernel gradient, batch 4, 2 cores: 256^2 x 64 -> 64 165 vs 194
# ms, 128^2 x 64 21 vs 24 ms; equal at 256 channels, slower for 512 -> 2048 (59 vs 51 ms).
DY_MAJOR_MAX_COUT = 128


def conv_general_dilated_for(platform: str | None):
  """The conv function for `nnx.Conv(conv_general_dilated=...)` on a config platform."""
  return conv_general_dilated if platform == CPU else lax.conv_general_dilated


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """Same signature and result as `lax.conv_general_dilated`; see the module docstring."""
  plain = (lhs.ndim == 4 and feature_group_count == 1
           and _is_nhwc(dimension_numbers, lhs.ndim)
           and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
           and kwargs.get("preferred_element_type") is None
           and kwargs.get("out_sharding") is None)
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  return conv2d(lhs, rhs, tuple(window_strides), pads, precision)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  if dimension_numbers is None:
    return False
  return lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, _NHWC) == (
      lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers))


def lax_conv(x, kernel, strides, pads, precision=None):
  """XLA's own NHWC / HWIO conv with explicit pads ((top, bottom), (left, right))."""
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           pads: tuple[tuple[int, int], tuple[int, int]], precision=None) -> jax.Array:
  """NHWC x (B, H, W, C_in), HWIO kernel (kh, kw, C_in, C_out) -> (B, H_out, W_out, C_out)."""
  return lax_conv(x, kernel, strides, pads, precision)


def _conv2d_fwd(x, kernel, strides, pads, precision):
  return lax_conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv2d_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: lax_conv(x_, kernel, strides, pads, precision), x)
  (dx,) = input_vjp(dy)
  dk = kernel_grad(x, dy, kernel.shape, strides, pads, precision)
  return dx, dk.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def band_rows(batch: int, out_h: int, out_w: int, patch: int, itemsize: int) -> int:
  """Largest divisor of out_h whose band of patches stays within BAND_BYTES (>= 1)."""
  per_row = batch * out_w * patch * itemsize
  best = 1
  for rows in range(1, out_h + 1):
    if out_h % rows == 0 and rows * per_row <= BAND_BYTES:
      best = rows
  return best


@cpu_kernel
def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...],
                strides: tuple[int, int], pads, precision=None, band_fn=None) -> jax.Array:
  """d(sum(dy * conv(f(x), k)))/dk, shape `kernel_shape` (kh, kw, C_in, C_out), float32.

  f = `band_fn`, an elementwise map applied band by band (identity if None): it lets a
  norm + activation in front of the conv be recomputed here instead of stored. Equal to
  XLA's conv kernel gradient up to float32 summation order.
  """
  kh, kw, cin, cout = kernel_shape
  if (kh, kw, *strides) == (1, 1, 1, 1) and not any(p for pair in pads for p in pair):
    xf = x if band_fn is None else band_fn(x)
    return jnp.einsum("bhwc,bhwd->cd", xf, dy, precision=precision,
                      preferred_element_type=jnp.float32).reshape(kernel_shape)
  sh, sw = strides
  b, out_h, out_w, _ = dy.shape
  (top, _), (left, right) = pads
  rows = band_rows(b, out_h, out_w, kh * kw * cin, x.dtype.itemsize)
  span = (rows - 1) * sh + kh   # input rows one band of `rows` output rows reads
  if span > x.shape[1]:         # tiny maps: one band over the whole padded input
    rows, span = out_h, (out_h - 1) * sh + kh

  dy_major = cout <= DY_MAJOR_MAX_COUT

  def band(acc, i):
    # Input rows [start, start + span) of the padded map, padded here band by band: a
    # whole padded copy of x would be made in the forward pass and kept until this one.
    start = i * rows * sh - top
    clipped = jnp.clip(start, 0, x.shape[1] - min(span, x.shape[1]))
    xs = lax.dynamic_slice_in_dim(x, clipped, min(span, x.shape[1]), axis=1)
    idx = jnp.arange(span) + (start - clipped)          # rows outside [0, H) are padding
    inside = (idx >= 0) & (idx < xs.shape[1])
    xs = jnp.take(xs, jnp.clip(idx, 0, xs.shape[1] - 1), axis=1)
    xs = jnp.where(inside[None, :, None, None], xs if band_fn is None else band_fn(xs), 0)
    xs = jnp.pad(xs, ((0, 0), (0, 0), (left, right), (0, 0)))
    ds = lax.dynamic_slice_in_dim(dy, i * rows, rows, axis=1)
    patches = jnp.stack([xs[:, a:a + (rows - 1) * sh + 1:sh, c:c + (out_w - 1) * sw + 1:sw]
                         for a in range(kh) for c in range(kw)], axis=3)
    spec, operands = (("bhwd,bhwkc->dkc", (ds, patches)) if dy_major
                      else ("bhwkc,bhwd->kcd", (patches, ds)))
    acc = acc + jnp.einsum(spec, *operands, precision=precision,
                           preferred_element_type=jnp.float32)
    return acc, None

  acc_shape = (cout, kh * kw, cin) if dy_major else (kh * kw, cin, cout)
  acc, _ = lax.scan(band, jnp.zeros(acc_shape, jnp.float32), jnp.arange(out_h // rows))
  return (acc.transpose(1, 2, 0) if dy_major else acc).reshape(kernel_shape)
