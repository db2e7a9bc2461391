"""Fast hand-written layers equal the stock Flax/XLA operations they replace."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mergevq_jax.models import layers


@pytest.mark.parametrize("shape, groups", [((2, 9, 7, 64), 32), ((3, 20, 96), 32), ((2, 5, 5, 8), 8)])
def test_group_norm_equals_flax(shape, groups):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
  ours = layers.GroupNorm(shape[-1], groups, rngs=nnx.Rngs(0))
  ours.scale[...] = jax.random.normal(jax.random.key(1), (shape[-1],))
  ours.bias[...] = jax.random.normal(jax.random.key(2), (shape[-1],))
  ref = nnx.GroupNorm(shape[-1], num_groups=groups, epsilon=1e-6, rngs=nnx.Rngs(0))
  ref.scale[...], ref.bias[...] = ours.scale[...], ours.bias[...]
  np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), atol=2e-5, rtol=1e-5)
  plain = layers.GroupNorm(shape[-1], groups, affine=False)
  y = np.asarray(plain(x)).reshape(shape[0], -1, groups, shape[-1] // groups)
  np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 3)), 1, atol=1e-3)


@pytest.mark.parametrize("offset", [1e2, 1e3])
def test_group_norm_is_accurate_when_the_mean_dwarfs_the_spread(offset):
  x = offset + jax.random.normal(jax.random.key(0), (2, 9, 7, 64))
  xr = np.asarray(x, np.float64).reshape(2, -1, 32, 2)
  ref = (xr - xr.mean(axis=(1, 3), keepdims=True)) / np.sqrt(
      xr.var(axis=(1, 3), keepdims=True) + 1e-6)
  out = np.asarray(layers.GroupNorm(64, 32)(x))
  np.testing.assert_allclose(out, ref.reshape(x.shape), atol=2e-3)


def test_depthwise_conv_equals_grouped_conv():
  c = 16
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, c))
  ours = layers.DepthwiseConv(c, rngs=nnx.Rngs(0))
  ours.bias[...] = jax.random.normal(jax.random.key(1), (c,))
  ref = nnx.Conv(c, c, (3, 3), feature_group_count=c, padding="SAME", rngs=nnx.Rngs(0))
  ref.kernel[...], ref.bias[...] = ours.kernel[...], ours.bias[...]
  np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), atol=1e-5, rtol=1e-5)


def test_strided_conv_pads_like_pytorch():
  """stride-2 3x3 conv with padding 1 on both sides (PyTorch), not XLA's asymmetric SAME."""
  conv = layers.conv(1, 1, 3, stride=2, use_bias=False, rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.ones((3, 3, 1, 1))
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = np.asarray(conv(x))[0, :, :, 0]
  xp = np.pad(np.arange(16.0).reshape(4, 4), 1)
  expect = np.array([[xp[i:i + 3, j:j + 3].sum() for j in (0, 2)] for i in (0, 2)])
  np.testing.assert_array_equal(y, expect)
