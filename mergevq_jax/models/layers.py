"""Layers shared by the encoder, decoder and source-recovery modules.

Shapes: images and feature maps are NHWC; token sequences are (B, N, D). Every
parameter carries logical axis names (see `mergevq_jax.sharding`). `dtype` is the
compute dtype (float32 or bfloat16); parameters are always created in float32.
Numerics follow the PyTorch reference (LayerNorm eps 1e-5, GroupNorm eps 1e-6, exact
erf GELU) so that checkpoints export to PyTorch without drift. `platform` (the config's:
'cpu', 'gpu', 'tpu'; None for XLA's own ops) selects the implementation of the convs
and norms in `mergevq_jax.ops`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mergevq_jax.ops.conv import conv_general_dilated_for
from mergevq_jax.ops.depthwise import depthwise_conv_for
from mergevq_jax.ops.group_norm import group_norm_apply
from mergevq_jax.ops.norm_silu_conv import norm_silu_conv
from mergevq_jax.sharding import axes, constrain

# config.dtype -> compute dtype (parameters are always float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The compute dtype named by config.dtype; ValueError for any other name."""
  if name not in DTYPES:
    raise ValueError(f"config.dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return DTYPES[name]


TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)
# PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU written as PyTorch computes it, x/2 (1 + erf(x/sqrt 2)).

  jax.nn.gelu(approximate=False) uses erfc, which XLA:CPU evaluates ~3x slower than erf.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


def linear(cin: int, cout: int, names: tuple[str | None, str | None], *, rngs: nnx.Rngs,
           dtype=jnp.float32, use_bias: bool = True, init=TRUNC_NORMAL) -> nnx.Linear:
  return nnx.Linear(cin, cout, use_bias=use_bias, dtype=dtype, kernel_init=init,
                    kernel_metadata=axes(*names), bias_metadata=axes(names[1]), rngs=rngs)


def conv(cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs, stride: int = 1,
         use_bias: bool = True, dtype=jnp.float32, padding="SAME", init=TORCH_DEFAULT,
         platform: str | None = None) -> nnx.Conv:
  """2-D conv on NHWC; 'SAME' padding equals PyTorch padding=k//2 for odd k, stride 1.

  Strided convs use explicit symmetric padding (PyTorch semantics), not XLA 'SAME'.
  On platform 'cpu' the kernel gradient takes the fast path of `mergevq_jax.ops.conv`.
  """
  if stride > 1 and padding == "SAME":
    padding = ((kernel // 2, kernel // 2),) * 2
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding,
                  use_bias=use_bias, dtype=dtype, conv_general_dilated=conv_general_dilated_for(platform),
                  kernel_init=init, kernel_metadata=axes(None, None, "conv_in", "conv_out"),
                  bias_metadata=axes("conv_out"), rngs=rngs)


class DepthwiseConv(nnx.Module):
  """Depthwise k x k conv (stride 1, zero 'SAME' padding, bias) on NHWC; kernel layout
  (k, k, 1, C) as nnx.Conv with feature_group_count=C (see `mergevq_jax.ops.depthwise`)."""

  def __init__(self, channels: int, kernel: int = 3, *, rngs: nnx.Rngs, dtype=jnp.float32,
               platform: str | None = None):
    self.kernel = nnx.Param(TRUNC_NORMAL(rngs.params(), (kernel, kernel, 1, channels)),
                            **axes(None, None, None, "conv_out"))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32), **axes("conv_out"))
    self.dtype = dtype
    self.depthwise_conv = depthwise_conv_for(platform)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    out = self.depthwise_conv(x, self.kernel[...].astype(self.dtype))
    return out + self.bias[...].astype(self.dtype)




class GroupNorm(nnx.Module):
  """GroupNorm over (B, ..., C) as torch.nn.GroupNorm; see `mergevq_jax.models.group_norm`."""

  def __init__(self, channels: int, num_groups: int = 32, *, rngs: nnx.Rngs | None = None,
               dtype=jnp.float32, affine: bool = True, eps: float = 1e-6):
    del rngs  # deterministic init; kept for a uniform constructor signature
    if channels % num_groups:
      raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32), **axes("norm")) if affine else None
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32), **axes("norm")) if affine else None

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = None if self.scale is None else self.scale[...]
    bias = None if self.bias is None else self.bias[...]
    return group_norm_apply(x, scale, bias, self.num_groups, self.eps).astype(self.dtype)


def group_norm(channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32, affine: bool = True
               ) -> GroupNorm:
  return GroupNorm(channels, 32, dtype=dtype, affine=affine, rngs=rngs)


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, eps: float = 1e-5
               ) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, scale_metadata=axes("norm"),
                       bias_metadata=axes("norm"), rngs=rngs)


def constrain_tokens(x: jax.Array) -> jax.Array:
  return constrain(x, ("batch", "length", "act_embed"))


def constrain_map(x: jax.Array) -> jax.Array:
  return constrain(x, ("batch", None, None, "act_channels"))


class ResBlock(nnx.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (+ 1x1 shortcut), convs without bias.

  Each GN -> SiLU -> conv runs as `norm_silu_conv`, which keeps only its input for the
  backward pass.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               platform: str | None = None):
    self.norm1 = group_norm(cin, rngs=rngs, dtype=dtype)
    self.conv1 = conv(cin, cout, 3, use_bias=False, dtype=dtype, rngs=rngs, platform=platform)
    self.norm2 = group_norm(cout, rngs=rngs, dtype=dtype)
    self.conv2 = conv(cout, cout, 3, use_bias=False, dtype=dtype, rngs=rngs, platform=platform)
    self.shortcut = (conv(cin, cout, 1, use_bias=False, dtype=dtype, rngs=rngs,
                          platform=platform) if cin != cout else None)
    self.dtype = dtype
    self.platform = platform

  def _norm_silu_conv(self, norm: GroupNorm, conv_: nnx.Conv, x: jax.Array) -> jax.Array:
    return norm_silu_conv(x, norm.scale[...], norm.bias[...],
                          conv_.kernel[...].astype(self.dtype), norm.num_groups, norm.eps,
                          self.platform)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self._norm_silu_conv(self.norm1, self.conv1, x)
    h = self._norm_silu_conv(self.norm2, self.conv2, h)
    res = self.shortcut(x) if self.shortcut is not None else x.astype(self.dtype)
    return constrain_map(h + res)


class Attention(nnx.Module):
  """Multi-head self- or cross-attention; qkv kernels laid out (embed, heads, head_dim)."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               cross: bool = False, implementation: str | None = None):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
    head_dim = dim // num_heads
    self.implementation = implementation
    self.dtype = dtype
    in_names = axes("embed", None, "heads", "head_dim")
    bias_names = axes(None, "heads", "head_dim")
    einsum = lambda n: nnx.Einsum(
        "btd,dkhc->btkhc", (dim, n, num_heads, head_dim), (n, num_heads, head_dim),
        dtype=dtype, kernel_init=TRUNC_NORMAL, kernel_metadata=in_names,
        bias_metadata=bias_names, rngs=rngs)
    if cross:
      self.q, self.kv, self.qkv = einsum(1), einsum(2), None
    else:
      self.q, self.kv, self.qkv = None, None, einsum(3)
    self.out = nnx.Einsum("bthc,hcd->btd", (num_heads, head_dim, dim), (dim,), dtype=dtype,
                          kernel_init=TRUNC_NORMAL,
                          kernel_metadata=axes("heads", "head_dim", "embed"),
                          bias_metadata=axes("embed"), rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               key_bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: (B, T, D) queries; context: (B, S, D) for cross-attention.

    key_bias: (B, 1, 1, S) added to the logits (proportional attention).
    Returns (output (B, T, D), keys averaged over heads (B, S, head_dim)).
    """
    if self.qkv is not None:
      q, k, v = jnp.moveaxis(self.qkv(x), 2, 0)
    else:
      q = self.q(x)[:, :, 0]
      k, v = jnp.moveaxis(self.kv(context), 2, 0)
    q = constrain(q, ("batch", "length", "act_heads", None))
    bias = None if key_bias is None else key_bias.astype(q.dtype)
    if self.implementation == "cudnn":
      o = padded_attention(q, k, v, bias, CUDNN_LENGTH_MULTIPLE, "cudnn")
    else:
      o = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=self.implementation)
    return self.out(o), jnp.mean(k, axis=2)


# cuDNN's fused attention takes query and key lengths that are whole multiples of this
# (measured on an H200 with jax 0.11.2: the training step of 257 tokens, 256 + [CLS], was
# refused with "Unsupported sequence length Q 257, KV 257").
CUDNN_LENGTH_MULTIPLE = 64


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                     multiple: int, implementation: str | None) -> jax.Array:
  """jax.nn.dot_product_attention with the query and key lengths padded up to `multiple`:
  padded keys get a large negative bias (no weight), padded queries are cut off, so the
  result equals the unpadded attention. q: (B, T, H, C); k, v: (B, S, H, C); bias:
  (B, 1, 1, S) or None. Returns (B, T, H, C)."""
  t, s = q.shape[1], k.shape[1]
  tp, sp = -(-t // multiple) * multiple, -(-s // multiple) * multiple
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
  key_bias = jnp.zeros((q.shape[0], 1, 1, s), q.dtype) if bias is None else bias
  key_bias = jnp.pad(key_bias, ((0, 0), (0, 0), (0, 0), (0, sp - s)),
                     constant_values=-1e9)
  key_bias = jnp.broadcast_to(key_bias, (q.shape[0], 1, tp, sp))   # cuDNN: (B, 1, T, S)
  o = jax.nn.dot_product_attention(pad(q, tp), pad(k, sp), pad(v, sp), bias=key_bias,
                                   implementation=implementation)
  return o[:, :t]


class Mlp(nnx.Module):
  """fc1 -> GELU -> fc2; `mix=True` inserts a depthwise 3x3 conv on the token grid
  before the GELU (MixFFN of the decoder)."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               mix: bool = False, platform: str | None = None):
    self.fc1 = linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.dwconv = (DepthwiseConv(hidden, dtype=dtype, rngs=rngs, platform=platform) if mix
                   else None)
    self.fc2 = linear(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, grid: tuple[int, int] | None = None) -> jax.Array:
    h = constrain(self.fc1(x), ("batch", "length", "act_mlp"))
    if self.dwconv is not None:
      b, n, c = h.shape
      h = self.dwconv(h.reshape(b, *grid, c)).reshape(b, n, c)
    return self.fc2(gelu(h))


class LayerScale(nnx.Module):
  def __init__(self, dim: int, init_value: float):
    self.gamma = nnx.Param(jnp.full((dim,), init_value, jnp.float32), **axes("norm"))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.gamma[...].astype(x.dtype)


class TransformerBlock(nnx.Module):
  """Pre-LN block: x + ls1(attn(ln1 x)); [ToMe merge goes here]; x + ls2(mlp(ln2 x))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               mlp_ratio: float = 4.0, init_values: float = 1e-5, mix_mlp: bool = False,
               attention_impl: str | None = None, platform: str | None = None):
    self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype, implementation=attention_impl)
    self.ls1 = LayerScale(dim, init_values)
    self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype, mix=mix_mlp,
                   platform=platform)
    self.ls2 = LayerScale(dim, init_values)

  def attention_residual(self, x: jax.Array, key_bias: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array]:
    """Returns (x + attention branch, head-averaged keys as the ToMe metric)."""
    h, metric = self.attn(self.norm1(x), key_bias=key_bias)
    return constrain_tokens(x + self.ls1(h)), metric

  def mlp_residual(self, x: jax.Array, grid: tuple[int, int] | None = None) -> jax.Array:
    return constrain_tokens(x + self.ls2(self.mlp(self.norm2(x), grid)))

  def __call__(self, x: jax.Array, grid: tuple[int, int] | None = None) -> jax.Array:
    return self.mlp_residual(self.attention_residual(x)[0], grid)


class MLPHead(nnx.Module):
  """Alignment head on the [CLS] feature.

  'layer3': D -> H -> GELU -> H -> GELU -> out (G+R, R);
  'layer2_ln': D -> H -> GELU -> LayerNorm -> out (G).
  """

  def __init__(self, dim: int, hidden: int, out: int, kind: str, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    if kind not in ("layer3", "layer2_ln"):
      raise ValueError(f"align head kind must be 'layer3' or 'layer2_ln', got {kind!r}")
    self.fc1 = linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    if kind == "layer3":
      self.fc2 = linear(hidden, hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs)
      self.norm = None
    else:
      self.fc2 = None
      self.norm = layer_norm(hidden, rngs=rngs, dtype=dtype)
    self.fc_out = linear(hidden, out, ("embed", "mlp") if kind == "layer3" else ("mlp", "embed"),
                         dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = gelu(self.fc1(x))
    h = gelu(self.fc2(h)) if self.fc2 is not None else self.norm(h)
    return self.fc_out(h)


def count_params(module_or_state) -> int:
  """Number of scalar parameters (nnx.Param) in a module or state."""
  state = (nnx.state(module_or_state, nnx.Param) if isinstance(module_or_state, nnx.Module)
           else module_or_state)
  return int(sum(x.size for x in jax.tree.leaves(state)))

