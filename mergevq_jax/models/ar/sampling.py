"""Sampling from logits with traced controls: temperature, top-k, top-p, CFG.

Every control is an array (not a Python constant), so changing it never recompiles a
jitted decoder. temperature <= 0 means greedy (argmax); top_k <= 0 and top_p = 1 switch
the filters off. `check_sampling` validates concrete values on the host, before tracing.
"""
from __future__ import annotations

from typing import NamedTuple

import math

import jax
import jax.numpy as jnp

# The host-side value check is pure Python, shared with the PyTorch port.
from mergevq_jax.models.ar.hparams import check_sampling


class SamplingParams(NamedTuple):
  temperature: jax.Array   # () float32; <= 0: greedy
  top_k: jax.Array         # () int32; <= 0: off (clipped to each head's vocabulary)
  top_p: jax.Array         # () float32 in (0, 1]; 1: off
  cfg_scale: jax.Array     # () float32 >= 0; logits = u + s (c - u) when guidance is on

  @classmethod
  def make(cls, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0) -> "SamplingParams":
    check_sampling(temperature, top_k, top_p, cfg_scale)
    return cls(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_k, jnp.int32),
               jnp.asarray(top_p, jnp.float32), jnp.asarray(cfg_scale, jnp.float32))


def guide(logits: jax.Array, scale: jax.Array) -> jax.Array:
  """Classifier-free guidance on (2B, V) logits whose first half is conditional:
  u + scale * (c - u), (B, V). scale 1 gives the conditional logits."""
  cond, uncond = jnp.split(logits, 2, axis=0)
  return uncond + scale * (cond - uncond)


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Set logits outside the top-k and outside the top-p nucleus to -inf: (B, V)."""
  vocab = logits.shape[-1]
  ordered = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.where(top_k > 0, jnp.clip(top_k, 1, vocab), vocab)
  kth = jnp.take(ordered, k - 1, axis=-1)[..., None]
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  in_nucleus = mass_before < top_p                    # the most likely token always stays
  nucleus_min = jnp.min(jnp.where(in_nucleus, ordered, jnp.inf), axis=-1, keepdims=True)
  keep = (logits >= kth) & (logits >= nucleus_min)
  return jnp.where(keep, logits, -jnp.inf)


def sample(key: jax.Array, logits: jax.Array, params: SamplingParams) -> jax.Array:
  """(B, V) float logits -> (B,) int32 token ids (argmax when temperature <= 0)."""
  def draw(x):
    x = x / jnp.maximum(params.temperature, 1e-6)
    # The filters sort the vocabulary: skip them (at run time, no recompile) when both are off.
    filtering = (params.top_k > 0) | (params.top_p < 1)
    x = jax.lax.cond(filtering, lambda y: filter_logits(y, params.top_k, params.top_p),
                     lambda y: y, x)
    return inverse_cdf_draw(key, x)

  greedy = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)
  return jax.lax.cond(params.temperature > 0, draw, greedy, logits.astype(jnp.float32))


def _block_size(vocab: int) -> int:
  """Largest divisor of `vocab` not above sqrt(vocab) (64 for 4096; 1 for a prime)."""
  return max(d for d in range(1, math.isqrt(vocab) + 1) if vocab % d == 0)


def inverse_cdf_draw(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits) (B, V) by inverting the CDF at u ~ U(0, 1),
  in two levels: a block of the vocabulary by block mass, then a token inside it.

  One uniform per row instead of the V Gumbel variates of `jax.random.categorical`, and
  no V-long cumulative sum: ~9x (batch 1) and ~10x (batch 64) cheaper on CPU for
  V = 4096, where sampling was a fifth of a decode step. Zero-probability (filtered)
  tokens are never drawn.
  """
  rows, vocab = logits.shape
  block = vocab // _block_size(vocab)          # tokens per block
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  weights = weights.reshape(rows, vocab // block, block)
  mass = jnp.sum(weights, axis=-1)                                     # (B, blocks)
  cdf = jnp.cumsum(mass, axis=-1)
  u = jax.random.uniform(key, (rows, 1), jnp.float32)
  target = jnp.maximum(u * cdf[:, -1:], jnp.finfo(jnp.float32).tiny)
  b = jnp.minimum(jnp.sum(cdf < target, axis=-1), vocab // block - 1)[:, None]
  row = jnp.take_along_axis(weights, b[:, :, None], axis=1)[:, 0]      # (B, block)
  start = jnp.take_along_axis(cdf - mass, b, axis=1)
  i = jnp.sum(start + jnp.cumsum(row, axis=-1) < target, axis=-1)
  last_nonzero = block - 1 - jnp.argmax(row[:, ::-1] > 0, axis=-1)    # rounding guard
  return (b[:, 0] * block + jnp.minimum(i, last_nonzero)).astype(jnp.int32)
