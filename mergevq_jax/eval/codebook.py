"""Codebook statistics of LFQ codes: histogram over the 2^d codes, usage, perplexity."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def code_histogram(indices: jax.Array, num_bits: int) -> jax.Array:
  """Counts of each of the 2^d codes, (2^d,) int32. Sum these over an eval set."""
  return jnp.bincount(indices.reshape(-1), length=2 ** num_bits)


def codebook_usage(counts: jax.Array) -> jax.Array:
  """Fraction of codes hit at least once."""
  return jnp.mean(counts > 0)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the empirical code distribution (nats)."""
  p = (counts / jnp.maximum(jnp.sum(counts), 1)).astype(jnp.float32)
  return jnp.exp(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30))))
