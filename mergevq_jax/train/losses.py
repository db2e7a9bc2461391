"""Stage-1 loss terms as pure functions (weights are applied by the trainer).

Shapes: images (B, H, W, 3); discriminator logits (B, h, w, 1); features (B, D);
source-recovery logits (B, K, L).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mergevq_jax.models import tome


def pixel_loss(recon: jax.Array, target: jax.Array, kind: str = "l1") -> jax.Array:
  """Mean absolute ('l1', reference code) or squared ('l2', paper) error."""
  diff = recon.astype(jnp.float32) - target.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {kind!r}")


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
  """Non-saturating: E[-log sigmoid(D(G(z)))]."""
  return jnp.mean(jax.nn.softplus(-logits_fake))


class LeCAMState(NamedTuple):
  """EMA of the discriminator's mean output on real and on generated images."""
  real: jax.Array
  fake: jax.Array

  @staticmethod
  def zeros() -> "LeCAMState":
    return LeCAMState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def lecam_update(state: LeCAMState, logits_real: jax.Array, logits_fake: jax.Array,
                 decay: float) -> LeCAMState:
  """EMA step towards the mean logits (accepts the logits or their means)."""
  return LeCAMState(
      real=decay * state.real + (1 - decay) * jax.lax.stop_gradient(jnp.mean(logits_real)),
      fake=decay * state.fake + (1 - decay) * jax.lax.stop_gradient(jnp.mean(logits_fake)))


def lecam_regularizer(logits_real: jax.Array, logits_fake: jax.Array,
                      ema: LeCAMState) -> jax.Array:
  """LeCAM (Tseng et al. 2021): E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(G(z)))^2]."""
  return (jnp.mean(jnp.square(jax.nn.relu(logits_real - ema.fake))) +
          jnp.mean(jnp.square(jax.nn.relu(ema.real - logits_fake))))


def alignment_loss(student: jax.Array, teacher: jax.Array, temperature: float = 4.0
                   ) -> jax.Array:
  """KL(softmax(t / T) || softmax(s / T)) * T^2, summed over features, mean over batch."""
  t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher).astype(jnp.float32) / temperature, -1)
  s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, -1)
  kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
  return jnp.mean(kl) * temperature ** 2


def source_bce(logits: jax.Array, owner: jax.Array) -> jax.Array:
  """Mean element-wise BCE between logits (B, K, L) and the true S from `owner` (B, L)."""
  target = tome.source_matrix(owner, logits.shape[1])
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
