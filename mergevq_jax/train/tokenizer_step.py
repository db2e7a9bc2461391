"""One stage-1 training step: generator update, then discriminator update, in one jit.

Both updates share the generator's forward pass (the discriminator sees the same
reconstructions, stop-gradient). With `train.accum_steps > 1` the batch is split into
micro-batches and gradients are summed by `lax.scan`, so activation memory is that of
one micro-batch. A step whose loss or gradients are not finite changes nothing but the
counters (`nonfinite`, `skipped`); the trainer stops after `train.nan_patience` in a row.

K (`num_keep`) is static: one compilation per candidate K, cached by jax.jit.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mergevq_jax import host_memory
from mergevq_jax.eval.metrics import psnr
from mergevq_jax.train import losses
from mergevq_jax.train.optim import ema_update, finite_update, guarded_update
from mergevq_jax.train.tokenizer_state import Graphs, TrainState, lr_schedule, optimizer


class Frozen(NamedTuple):
  """Frozen networks, None when switched off. `make_train_step` takes their graphdefs,
  the step function their states (a pytree of arrays)."""
  lpips: Any = None
  teacher: Any = None


def make_train_step(config, graphs: Graphs, frozen_graphs: Frozen) -> Callable:
  """Returns step(state, batch, frozen_states, num_keep) -> (state, metrics)."""
  lo, t = config.loss, config.train
  q = config.quantizer
  tx = optimizer(config)
  schedule = lr_schedule(config)
  use_disc = graphs.disc is not None

  def generator_loss(params, disc, frozen, batch, num_keep, adv_on):
    model = nnx.merge(graphs.tokenizer, params)
    images = batch["image"]
    recon, enc = model.reconstruct(images, num_keep)
    terms = {"pixel": losses.pixel_loss(recon, images, lo.pixel),
             "commit": enc.lfq.commit_loss, "entropy": enc.lfq.entropy_loss,
             "per_token_entropy": enc.lfq.per_token_entropy,
             "batch_entropy": enc.lfq.batch_entropy}
    total = (lo.pixel_weight * terms["pixel"] + q.commit_weight * terms["commit"] +
             q.entropy_weight * terms["entropy"])
    if frozen.lpips is not None:
      lpips = nnx.merge(frozen_graphs.lpips, frozen.lpips)
      terms["lpips"] = jnp.mean(lpips(recon, images))
      total += lo.lpips_weight * terms["lpips"]
    if use_disc:
      d = nnx.merge(graphs.disc, disc)
      terms["g_adv"] = losses.generator_loss(d(recon))
      total += adv_on * lo.gan_weight * terms["g_adv"]
    if frozen.teacher is not None:
      teacher = nnx.merge(frozen_graphs.teacher, frozen.teacher)
      target = jax.lax.stop_gradient(teacher(batch["weak"]))
      terms["align"] = losses.alignment_loss(model.align(batch["strong"], num_keep), target)
      total += lo.align_weight * terms["align"]
    if model.recovery is not None:
      rec = model.recover_source(jax.lax.stop_gradient(enc.tokens))
      terms["recovery_bce"] = losses.source_bce(rec.logits, enc.owner)
      terms["recovery_acc"] = jnp.mean(rec.owner == enc.owner)
      total += lo.recovery_weight * terms["recovery_bce"]
    terms["psnr"] = psnr(recon, images)
    terms["g_total"] = total
    return total, (terms, jax.lax.stop_gradient(recon))

  def disc_loss(disc, images, recon, lecam):
    d = nnx.merge(graphs.disc, disc)
    real, fake = d(images), d(recon)
    hinge = losses.hinge_d_loss(real, fake)
    reg = losses.lecam_regularizer(real, fake, lecam)
    return hinge + lo.lecam_weight * reg, {"d_hinge": hinge, "d_lecam": reg,
                                            "d_real": jnp.mean(real), "d_fake": jnp.mean(fake)}

  def micro_step(state: TrainState, frozen, batch, num_keep, adv_on):
    """Gradients and metrics of one micro-batch."""
    (_, (terms, recon)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.params, state.disc, frozen, batch, num_keep, adv_on)
    if use_disc:
      (_, d_terms), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(
          state.disc, batch["image"], recon, state.lecam)
      terms = {**terms, **d_terms}
    else:
      d_grads = {}
    return g_grads, d_grads, terms

  def step(state: TrainState, batch, frozen, num_keep: int):
    adv_on = (state.step >= lo.disc_start).astype(jnp.float32)
    if t.accum_steps == 1:
      g_grads, d_grads, terms = micro_step(state, frozen, batch, num_keep, adv_on)
    else:
      micro = jax.tree.map(lambda x: x.reshape(t.accum_steps, -1, *x.shape[1:]), batch)

      def body(carry, mb):
        out = micro_step(state, frozen, mb, num_keep, adv_on)
        return jax.tree.map(jnp.add, carry, out), None

      shapes = jax.eval_shape(lambda s, f, b, a: micro_step(s, f, b, num_keep, a),
                              state, frozen, jax.tree.map(lambda x: x[0], micro), adv_on)
      zeros = jax.tree.map(jnp.zeros_like, shapes)
      total, _ = jax.lax.scan(body, zeros, micro)
      g_grads, d_grads, terms = jax.tree.map(lambda x: x / t.accum_steps, total)

    finite, (g_norm, _) = finite_update(terms["g_total"], g_grads, d_grads)

    def apply(state: TrainState) -> TrainState:
      updates, opt_state = tx.update(g_grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema = ema_update(state.ema, params, t.ema_decay)
      disc, disc_opt, lecam = state.disc, state.disc_opt_state, state.lecam
      if use_disc:
        d_updates, disc_opt = tx.update(jax.tree.map(lambda g: adv_on * g, d_grads),
                                        state.disc_opt_state, state.disc)
        disc = optax.apply_updates(state.disc, d_updates)
        new_lecam = losses.lecam_update(lecam, terms["d_real"], terms["d_fake"], lo.lecam_decay)
        lecam = jax.tree.map(lambda n, o: jnp.where(adv_on > 0, n, o), new_lecam, lecam)
      return state._replace(params=params, opt_state=opt_state, ema=ema, disc=disc,
                            disc_opt_state=disc_opt, lecam=lecam)

    new = guarded_update(state, finite, apply)
    metrics = {**terms, "finite": finite.astype(jnp.float32), "lr": schedule(state.step),
               "g_grad_norm": g_norm, "adv_on": adv_on}
    return new, metrics

  return step


def jit_train_step(step_fn, state_shardings, batch_sharding, frozen_shardings, mesh):
  """jax.jit with explicit shardings, the state donated, K static.

  Call as fn(state, batch, frozen, num_keep): K is positional (jit takes no keyword
  arguments when in_shardings are given).
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step_fn, static_argnums=(3,), donate_argnums=(0,),
                 in_shardings=(state_shardings, batch_sharding, frozen_shardings),
                 out_shardings=(state_shardings, replicated))


class StepPerK:
  """A jitted step compiled ahead of time once per K, called as fn(state, batch, frozen, K).

  After each compilation the host memory XLA's compiler freed (~2 GB for G+R) is given
  back to the OS before the step first allocates its own buffers (`host_memory`), so the
  process peak is not compiler scratch plus step buffers.

  With `workers` > 0 (the trainer's choice on the gpu and tpu platforms, where one G+R
  step takes minutes to compile: docs/pods_and_clusters.md, "Compiling for TPU"), the first
  call lowers the step for every K in `candidates` and compiles them concurrently in
  `workers` threads (XLA compiles without the GIL); a call waits only for its own K, so a
  new K drawn later no longer stalls training for a whole compilation.
  """

  def __init__(self, jitted, candidates=(), workers: int = 0):
    self.jitted = jitted
    self.candidates = tuple(dict.fromkeys(candidates))
    self.workers = workers
    self.compiled = {}   # K -> executable, or a Future of one while compiling ahead

  def __call__(self, state, batch, frozen, num_keep: int):
    if self.workers and not self.compiled:
      self._compile_ahead(state, batch, frozen)
    fn = self.compiled.get(num_keep)
    if fn is None:
      fn = self.compiled[num_keep] = self.jitted.lower(state, batch, frozen, num_keep).compile()
      host_memory.release_free_memory()
    elif isinstance(fn, concurrent.futures.Future):
      fn = self.compiled[num_keep] = fn.result()
    return fn(state, batch, frozen)

  def _compile_ahead(self, state, batch, frozen) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="compile")
    for k in self.candidates:   # tracing and lowering here, in this thread
      self.compiled[k] = pool.submit(self.jitted.lower(state, batch, frozen, k).compile)
    pool.shutdown(wait=False)

  @property
  def num_compiled(self) -> int:
    return sum(not isinstance(f, concurrent.futures.Future) or f.done()
               for f in self.compiled.values())
