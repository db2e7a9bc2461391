"""Sampling from logits with traced controls: temperature, top-k, top-p, CFG.

Every control is an array (not a Python constant), so changing it never recompiles a
jitted decoder. temperature <= 0 means greedy (argmax); top_k <= 0 and top_p = 1 switch
the filters off. `check_sampling` validates concrete values on the host, before tracing.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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


def check_sampling(temperature, top_k, top_p, cfg_scale) -> None:
  """ValueError for values that cannot work (host-side, concrete values)."""
  if not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if not np.isfinite(cfg_scale) or cfg_scale < 0:
    raise ValueError(f"CFG scale must be finite and >= 0, got {cfg_scale}")


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
  """(B, V) float logits -> (B,) int32 token ids."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.maximum(params.temperature, 1e-6)
  # The filters sort the vocabulary: skip them (at run time, no recompile) when both are off.
  filtering = (params.top_k > 0) | (params.top_p < 1)
  scaled = jax.lax.cond(filtering, lambda x: filter_logits(x, params.top_k, params.top_p),
                        lambda x: x, scaled)
  return jnp.where(params.temperature > 0, inverse_cdf_draw(key, scaled), greedy)


def inverse_cdf_draw(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits) (B, V): the first index whose cumulative
  probability reaches u ~ U(0, 1). One uniform per row instead of the V Gumbel variates
  of `jax.random.categorical`: ~9x cheaper on CPU for V = 4096, where sampling was a
  fifth of a batch-1 decode step. Zero-probability (filtered) tokens are never drawn."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.random.uniform(key, (*logits.shape[:-1], 1), jnp.float32)
  target = jnp.maximum(u * cdf[..., -1:], jnp.finfo(jnp.float32).tiny)
  index = jnp.sum(cdf < target, axis=-1)
  return jnp.minimum(index, logits.shape[-1] - 1).astype(jnp.int32)
