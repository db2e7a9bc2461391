"""What every training step does after its gradients: the finiteness guard (loss and
gradient norms), the update applied only when they are finite (counting skipped steps
otherwise), and the EMA.

Train states are NamedTuples with `step`, `nonfinite` (consecutive skipped steps) and
`skipped` (all skipped steps), int32 scalars.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
import optax

State = TypeVar("State")


def finite_update(loss: jax.Array, *grads) -> tuple[jax.Array, list[jax.Array]]:
  """(ok, [global L2 norm of each gradient tree]); ok (a bool scalar) when the loss and
  every norm are finite. A norm is NaN or inf when any element is, and inf when its sum of
  squares overflows float32 (|g| above ~1e19): divergence that an element-wise check of
  the gradients misses."""
  norms = [optax.tree.norm(g) for g in grads]
  ok = jnp.isfinite(loss)
  for norm in norms:
    ok = ok & jnp.isfinite(norm)
  return ok, norms


def ema_update(ema, params, decay: float):
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def guarded_update(state: State, finite: jax.Array, apply: Callable[[State], State]) -> State:
  """`apply(state)` (with `nonfinite` reset) if `finite`, else the state with its skip
  counters advanced; `step` advances either way.

  lax.cond, not a per-leaf jnp.where: the update is computed only when it is used, and
  XLA:CPU compiles the step ~3x faster (no all-gradient predicate in every fusion).
  """
  def ok(s):
    return apply(s)._replace(nonfinite=jnp.zeros_like(s.nonfinite))

  def skip(s):
    return s._replace(nonfinite=s.nonfinite + 1, skipped=s.skipped + 1)

  return jax.lax.cond(finite, ok, skip, state)._replace(step=state.step + 1)
