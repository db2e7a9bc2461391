"""Fast hand-written layers equal the stock Flax/XLA operations they replace."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mergevq_jax.ops import conv as conv_lib
from mergevq_jax.models import layers
from mergevq_jax.ops import depthwise
from mergevq_jax.ops.group_norm import group_norm_apply
from mergevq_jax.ops.norm_silu_conv import norm_silu_conv


def _assert_same_value_and_grads(ours, ref, args, atol, rtol=1e-5):
  """ours(*args) == ref(*args) and so are the gradients w.r.t. every argument, under a
  random cotangent (a plain sum would hide errors that cancel)."""
  out = ref(*args)
  weight = jax.random.normal(jax.random.key(99), out.shape)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * weight)
  argnums = tuple(range(len(args)))
  got = jax.jit(jax.value_and_grad(loss(ours), argnums))(*args)
  want = jax.value_and_grad(loss(ref), argnums)(*args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=rtol)


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


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_group_norm_gradient_equals_autodiff(affine, offset):
  """The hand-written VJP of GroupNorm equals autodiff of the textbook formula."""
  c, groups = 64, 32
  x = offset + 2.0 * jax.random.normal(jax.random.key(0), (2, 6, 5, c))
  scale = jax.random.normal(jax.random.key(1), (c,)) if affine else None
  bias = jax.random.normal(jax.random.key(2), (c,)) if affine else None

  def ref_fn(x, scale=None, bias=None):  # two-pass statistics: accurate at large offsets
    xr = x.reshape(x.shape[0], -1, groups, c // groups)
    centred = xr - xr.mean(axis=(1, 3), keepdims=True)
    y = (centred * jax.lax.rsqrt(jnp.mean(centred ** 2, axis=(1, 3), keepdims=True) + 1e-6)
         ).reshape(x.shape)
    return y if scale is None else y * scale + bias

  ours = lambda x, scale=None, bias=None: group_norm_apply(x, scale, bias, groups, 1e-6)
  args = (x, scale, bias) if affine else (x,)
  _assert_same_value_and_grads(ours, ref_fn, args, atol=2e-4, rtol=1e-4)


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
  kernel = ours.kernel[...]
  grouped = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
  _assert_same_value_and_grads(depthwise.depthwise_conv, grouped, (x, kernel), atol=1e-4)


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((2, 12, 10, 8), 3, 1, "SAME"),
    ((2, 13, 9, 3), 3, 2, ((1, 1), (1, 1))),      # encoder downsampling, odd size
    ((2, 12, 12, 6), 4, 2, ((1, 1), (1, 1))),     # PatchGAN
    ((1, 9, 7, 5), 3, 1, "VALID"),
    ((2, 8, 8, 4), 1, 1, "SAME"),                 # 1x1: one matmul
    ((2, 9, 8, 4), 1, 2, ((0, 1), (1, 0))),       # 1x1, strided and padded: bands
])
@pytest.mark.parametrize("dy_major", [True, False])
def test_conv_kernel_gradient_equals_xla(shape, kernel, stride, padding, dy_major,
                                         monkeypatch):
  """The banded kernel gradient equals XLA's, over several bands (small BAND_BYTES), with
  either operand order of the band's matmul."""
  monkeypatch.setattr(conv_lib, "BAND_BYTES", 4 * shape[0] * shape[2] * kernel ** 2 * shape[3])
  monkeypatch.setattr(conv_lib, "DY_MAJOR_MAX_COUT", 1 << 30 if dy_major else 0)
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], 7))
  dn = ("NHWC", "HWIO", "NHWC")
  ours = lambda x, k: conv_lib.conv_general_dilated(x, k, (stride, stride), padding,
                                                    dimension_numbers=dn)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (stride, stride), padding,
                                                  dimension_numbers=dn)
  _assert_same_value_and_grads(ours, ref, (x, k), atol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 30.0])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_norm_silu_conv_equals_the_composed_layers(offset, backend, monkeypatch):
  """conv(silu(GN(x))) with the norm recomputed in the backward pass (several bands)
  equals the same layers differentiated one by one. "gpu" runs, on this CPU, the branch
  that the GPU and TPU platforms take (the activation recomputed whole, XLA's kernel
  gradient)."""
  monkeypatch.setattr(conv_lib, "BAND_BYTES", 3 * 2 * 9 * 9 * 64 * 4)
  x = offset + 2.0 * jax.random.normal(jax.random.key(0), (2, 10, 9, 64))
  scale = 1.0 + 0.3 * jax.random.normal(jax.random.key(1), (64,))
  bias = jax.random.normal(jax.random.key(2), (64,))
  kernel = 0.1 * jax.random.normal(jax.random.key(3), (3, 3, 64, 8))
  composed = lambda x, s, b, k: jax.lax.conv_general_dilated(
      jax.nn.silu(group_norm_apply(x, s, b, 32, 1e-6)), k, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fused = lambda x, s, b, k: norm_silu_conv(x, s, b, k, 32, 1e-6, backend)
  _assert_same_value_and_grads(fused, composed, (x, scale, bias, kernel), atol=2e-4, rtol=1e-4)


def test_conv_bands_cover_the_output_rows():
  assert conv_lib.band_rows(4, 256, 256, 9 * 64, 4) == 2            # 4.7 MB per band
  assert conv_lib.band_rows(1, 7, 5, 9, 4) == 7                     # tiny: one band
  assert conv_lib.band_rows(64, 13, 4096, 9 * 512, 4) == 1          # prime rows, huge band


def test_strided_conv_pads_like_pytorch():
  """stride-2 3x3 conv with padding 1 on both sides (PyTorch), not XLA's asymmetric SAME."""
  conv = layers.conv(1, 1, 3, stride=2, use_bias=False, rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.ones((3, 3, 1, 1))
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = np.asarray(conv(x))[0, :, :, 0]
  xp = np.pad(np.arange(16.0).reshape(4, 4), 1)
  expect = np.array([[xp[i:i + 3, j:j + 3].sum() for j in (0, 2)] for i in (0, 2)])
  np.testing.assert_array_equal(y, expect)


def test_platform_selects_the_kernels_and_both_agree():
  """A ResBlock (two norm-SiLU-convs + 1x1 shortcut) and a depthwise conv built for the
  'cpu' platform (banded kernel gradient: a while loop in the program, shifted
  multiply-adds) and for 'tpu' (XLA's own convs, no loop) compute the same values and
  gradients; the choice comes from the argument, not from the running backend."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
  built = {p: (layers.ResBlock(32, 64, rngs=nnx.Rngs(0), platform=p),
               layers.DepthwiseConv(32, rngs=nnx.Rngs(1), platform=p)) for p in ("cpu", "tpu")}

  def loss_fn(platform):
    block, dw = built[platform]
    graphdef, state = nnx.split((block, dw))

    def loss(state, x):
      block, dw = nnx.merge(graphdef, state)
      return jnp.sum(jnp.sin(block(dw(x))))
    return loss, state

  results, programs = {}, {}
  for platform in ("cpu", "tpu"):
    loss, state = loss_fn(platform)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    programs[platform] = grad.lower(state, x).as_text()
    results[platform] = grad(state, x)
  assert "while" in programs["cpu"] and "while" not in programs["tpu"]
  assert "feature_group_count = 32" in programs["tpu"]
  for a, b in zip(jax.tree.leaves(results["cpu"]), jax.tree.leaves(results["tpu"]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)


def test_padded_attention_equals_attention_values_and_gradients():
  """The cuDNN path pads query and key lengths to a multiple of 64 (257 tokens: 256 + [CLS]);
  padded keys take no weight and padded queries are cut off, in value and gradient."""
  from mergevq_jax.models.layers import padded_attention
  kq, kk, kv, kb = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (2, 257, 2, 8))
  k = jax.random.normal(kk, (2, 257, 2, 8))
  v = jax.random.normal(kv, (2, 257, 2, 8))
  bias = jnp.log(jax.random.uniform(kb, (2, 1, 1, 257), minval=0.5, maxval=3.0))
  plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias).sum()
  padded = lambda q, k, v: padded_attention(q, k, v, bias, 64, None).sum()
  np.testing.assert_allclose(padded_attention(q, k, v, bias, 64, None),
                             jax.nn.dot_product_attention(q, k, v, bias=bias), atol=1e-5)
  for a, b in zip(jax.grad(plain, (0, 1, 2))(q, k, v), jax.grad(padded, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert padded_attention(q, k, v, None, 64, None).shape == q.shape
