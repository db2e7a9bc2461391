"""The MergeAR (stage 2) training step, jitted.

Loss: the sum over sub-code heads of the cross-entropy of the teacher-forced logits
(= -log p(code), nats per position), under the training mask: `merge_mask(codes, W,
K_cap=L)` ('merge') or causal ('causal'). Class labels are replaced by the null class
with probability train.class_dropout (for classifier-free guidance). AdamW(b1, b2,
weight decay on matrices only; `ar_state`), linear warmup then constant or cosine,
global-norm clipping, optional EMA. A non-finite step changes nothing but the counters.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mergevq_jax.models.ar.blocks import cross_entropy
from mergevq_jax.models.ar.merge_mask import attention_mask
from mergevq_jax.models.ar.mergear import MergeAR
from mergevq_jax.train.ar_state import ARTrainState, lr_schedule, optimizer
from mergevq_jax.train.optim import ema_update, finite_update, guarded_update


def keep_index_of(keep: jax.Array, keep_values) -> jax.Array:
  """K values (B,) -> indices into keep_values (B,) (the trainer checks membership)."""
  table = jnp.asarray(keep_values, jnp.int32)
  return jnp.argmax(keep[:, None] == table[None, :], axis=-1).astype(jnp.int32)


def drop_labels(labels: jax.Array, step: jax.Array, rate: float, null_class: int, seed: int
                ) -> jax.Array:
  """Labels (B,) with each replaced by `null_class` with probability `rate`; a pure
  function of (seed, step), so resumed runs drop the same labels."""
  key = jax.random.fold_in(jax.random.key(seed + 17), step)
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), null_class, labels)


def loss_fn(model: MergeAR, batch: dict, class_ids: jax.Array) -> tuple[jax.Array, dict]:
  m = model.config.model
  codes = batch["codes"]
  mask = attention_mask(codes, m.attention, m.window)
  logits = model(codes, class_ids, keep_index_of(batch["keep"], m.keep_values), mask)
  return cross_entropy(logits, codes, m.sub_code_bits)


def make_train_step(config, graph: nnx.GraphDef) -> Callable:
  """step(state, batch) -> (state, metrics); batch {'codes', 'keep', 'label'}."""
  t, m = config.train, config.model
  tx = optimizer(config)
  schedule = lr_schedule(config)

  def step(state: ARTrainState, batch):
    class_ids = drop_labels(batch["label"], state.step, t.class_dropout, m.num_classes,
                            config.seed)

    def loss(params):
      return loss_fn(nnx.merge(graph, params), batch, class_ids)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    finite, (grad_norm,) = finite_update(value, grads)

    def apply(state: ARTrainState) -> ARTrainState:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = ema_update(state.ema, params, t.ema_decay) if t.ema_decay > 0 else state.ema
      return state._replace(params=params, opt_state=opt_state, ema=ema)

    new = guarded_update(state, finite, apply)
    metrics = {**metrics, "loss": value, "finite": finite.astype(jnp.float32),
               "lr": schedule(state.step), "grad_norm": grad_norm}
    return new, metrics

  return step


def jit_train_step(step_fn, state_shardings, batch_sharding, mesh):
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step_fn, donate_argnums=(0,), in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated))
