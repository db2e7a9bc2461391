"""PatchGAN discriminator (pix2pix / taming NLayerDiscriminator): 4x4 convs, LeakyReLU 0.2.

images (B, H, W, 3) in [-1, 1] -> patch logits (B, H', W', 1); for 256x256 and 3 layers
H' = W' = 30.

Normalisation: the reference uses BatchNorm and only ever runs the discriminator in
training mode, so its running averages are never read. We normalise with the batch
statistics directly (no running state): the step stays a pure function, and under a
sharded batch the mean is global, so sharded and single-device training agree.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mergevq_jax.models import layers
from mergevq_jax.sharding import axes


class BatchStatNorm(nnx.Module):
  """Per-channel normalisation with the current batch's mean and (biased) variance."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, eps: float = 1e-5):
    self.scale = nnx.Param(1.0 + 0.02 * jax.random.normal(rngs.params(), (channels,)),
                           **axes("norm"))
    self.bias = nnx.Param(jnp.zeros((channels,)), **axes("norm"))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(0, 1, 2))
    var = jnp.maximum(jnp.mean(xf * xf, axis=(0, 1, 2)) - mean * mean, 0.0)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


class PatchDiscriminator(nnx.Module):

  def __init__(self, base_channels: int = 64, num_layers: int = 3, *, rngs: nnx.Rngs,
               dtype=jnp.float32, platform: str | None = None):
    init = nnx.initializers.normal(0.02)
    conv = lambda cin, cout, stride, bias: layers.conv(
        cin, cout, 4, stride=stride, padding=((1, 1), (1, 1)), use_bias=bias, dtype=dtype,
        init=init, rngs=rngs, platform=platform)
    convs, norms = [conv(3, base_channels, 2, True)], [None]
    cin = base_channels
    for n in range(1, num_layers + 1):
      cout = base_channels * min(2 ** n, 8)
      convs.append(conv(cin, cout, 2 if n < num_layers else 1, False))
      norms.append(BatchStatNorm(cout, rngs=rngs))
      cin = cout
    convs.append(conv(cin, 1, 1, True))
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs[:-1], self.norms):
      x = conv(x)
      if norm is not None:
        x = norm(x)
      x = jax.nn.leaky_relu(x, 0.2)
    return self.convs[-1](x).astype(jnp.float32)
