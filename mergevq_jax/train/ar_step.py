"""MergeAR (stage 2) train state, optimizer and the jitted training step.

Loss: the sum over sub-code heads of the cross-entropy of the teacher-forced logits
(= -log p(code), nats per position), under the training mask: `merge_mask(codes, W,
K_cap=L)` ('merge') or causal ('causal'). Class labels are replaced by the null class
with probability train.class_dropout (for classifier-free guidance). AdamW(b1, b2,
weight decay on matrices only), linear warmup then constant or cosine, global-norm
clipping, optional EMA. A non-finite step changes nothing but the counters.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mergevq_jax import sharding
from mergevq_jax.models.merge_mask import attention_mask
from mergevq_jax.models.mergear import MergeAR, cross_entropy
from mergevq_jax.train.step import tree_all_finite


class ARTrainState(NamedTuple):
  step: jax.Array
  params: Any           # nnx.State of MergeAR
  opt_state: Any
  ema: Any              # EMA of params ({} when train.ema_decay = 0)
  nonfinite: jax.Array  # consecutive non-finite steps
  skipped: jax.Array    # all skipped steps


def lr_schedule(config) -> optax.Schedule:
  t = config.train
  warmup = max(int(t.warmup_steps), 0)
  if t.schedule == "cosine":
    main = optax.cosine_decay_schedule(t.lr, max(t.steps - warmup, 1))
  else:
    main = optax.constant_schedule(t.lr)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), main], [warmup])


def optimizer(config) -> optax.GradientTransformation:
  """AdamW; no weight decay on norms (1-D parameters); clipping first."""
  t = config.train
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  adamw = optax.adamw(lr_schedule(config), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                      mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw) if t.grad_clip else adamw


def _init(config) -> ARTrainState:
  params = nnx.state(MergeAR(config, rngs=nnx.Rngs(config.seed)), nnx.Param)
  ema = jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else {}
  zero = jnp.zeros((), jnp.int32)
  return ARTrainState(step=zero, params=params, opt_state=optimizer(config).init(params),
                      ema=ema, nonfinite=zero, skipped=zero)


def abstract_state(config) -> ARTrainState:
  return jax.eval_shape(lambda: _init(config))


def create_state(config, mesh, rules) -> tuple[ARTrainState, Any]:
  """Initialise the MergeAR train state sharded on `mesh`. Returns (state, shardings)."""
  return sharding.init_state(lambda: _init(config), mesh, rules)


def graphdef(config) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0))))


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
    finite = tree_all_finite((grads, value))

    def apply(state: ARTrainState) -> ARTrainState:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = jax.tree.map(lambda e, p: t.ema_decay * e + (1 - t.ema_decay) * p, state.ema,
                         params) if t.ema_decay > 0 else state.ema
      return state._replace(params=params, opt_state=opt_state, ema=ema,
                            nonfinite=jnp.zeros_like(state.nonfinite))

    def skip(state: ARTrainState) -> ARTrainState:
      return state._replace(nonfinite=state.nonfinite + 1, skipped=state.skipped + 1)

    new = jax.lax.cond(finite, apply, skip, state)._replace(step=state.step + 1)
    metrics = {**metrics, "loss": value, "finite": finite.astype(jnp.float32),
               "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
    return new, metrics

  return step


def jit_train_step(step_fn, state_shardings, batch_sharding, mesh):
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step_fn, donate_argnums=(0,), in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, replicated))
