"""The stage-1 train step on synthetic batches: it learns, accumulation is exact for
per-sample losses, non-finite steps change nothing, losses are right."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mergevq_jax import sharding
from mergevq_jax.eval import metrics
from mergevq_jax.train import losses
from mergevq_jax.train.tokenizer_state import create_state, graphs
from mergevq_jax.train.tokenizer_step import Frozen, jit_train_step, make_train_step

from conftest import load_config


SIZE = 16


def small_config(**train):
  """The demo config shrunk so that a train step compiles quickly: 16x16 images, one
  down-sampling level (/2 -> L=64), two ToMe blocks, K in {36, 49}."""
  cfg = load_config("demo_cpu")
  m = cfg.model
  m.image_size, m.ch_mult, m.num_layers = SIZE, (1, 2), 2
  m.num_keep, m.keep_candidates, m.keep_probs = 36, (36, 49), (0.5, 0.5)
  cfg.disc.base_channels, cfg.disc.num_layers = 16, 2
  cfg.train.batch_size = 4
  cfg.train.lr = 2e-3
  cfg.eval.num_images = cfg.stage2.gfid_samples = 0   # the demo's evaluations: off
  for k, v in train.items():
    cfg.train[k] = v
  return cfg


def build(cfg):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rules = sharding.DEFAULT_RULES
  state, shardings = create_state(cfg, mesh, rules)
  batch_sharding = NamedSharding(mesh, P())
  fn = jit_train_step(make_train_step(cfg, graphs(cfg), Frozen()), shardings, batch_sharding,
                      Frozen(), mesh)
  return state, fn


def batch(seed=0, n=4):
  """Smooth images (bilinearly upsampled 4x4 noise): learnable in a few steps."""
  low = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 3), minval=-1, maxval=1)
  return {"image": jax.image.resize(low, (n, SIZE, SIZE, 3), "bilinear")}


def test_steps_reduce_the_loss_and_compile_once_per_k():
  cfg = small_config()
  cfg.loss.disc_start = 0
  state, fn = build(cfg)
  b = batch()
  first = None
  for i in range(15):
    state, m = fn(state, b, Frozen(), 36)
    first = first if first is not None else float(m["pixel"])
  assert float(m["pixel"]) < 0.7 * first
  assert int(state.step) == 15 and int(state.skipped) == 0
  assert {"g_adv", "d_hinge", "d_lecam", "recovery_bce", "psnr"} <= set(m)
  state, _ = fn(state, b, Frozen(), 49)
  state, _ = fn(state, b, Frozen(), 49)
  assert fn._cache_size() == 2
  # EMA moved towards the parameters but not all the way.
  gaps = [float(jnp.abs(p - e).max()) for p, e in
          zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema))]
  assert max(gaps) > 0


def per_sample_config(**train):
  """small_config with per-sample losses only (the LFQ batch entropy and the
  batch-normalised discriminator are batch statistics) and one ToMe block, no source
  recovery: the accumulation and finiteness tests do not need more to compile."""
  cfg = small_config(**train)
  cfg.quantizer.batch_weight = 0.0
  cfg.disc.enabled = False
  cfg.model.num_layers = 1
  cfg.model.recovery.enabled = False
  return cfg


def test_gradient_accumulation_equals_full_batch():
  """Exact for per-sample losses (see per_sample_config)."""
  results = []
  for accum in (1, 2):
    state, fn = build(per_sample_config(accum_steps=accum))
    state, m = fn(state, batch(3), Frozen(), 36)
    results.append((state, m))
  (s1, m1), (s2, m2) = results
  np.testing.assert_allclose(float(m1["pixel"]), float(m2["pixel"]), rtol=1e-5)
  # Adam's first step moves each parameter by ~lr * sign(g), which float noise in
  # near-zero gradients can flip; the gradients themselves are in mu = (1 - b1) g.
  mu1, mu2 = s1.opt_state[0].mu, s2.opt_state[0].mu
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(mu1))
  for a, b in zip(jax.tree.leaves(mu1), jax.tree.leaves(mu2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale, rtol=1e-3)


def test_nonfinite_step_is_skipped_and_counted():
  state, fn = build(per_sample_config())   # the accumulation test's accum=1 step
  before = jax.tree.map(np.asarray, state.params)
  bad = {"image": batch()["image"].at[0, 0, 0, 0].set(jnp.nan)}
  state, m = fn(state, bad, Frozen(), 36)
  state, m = fn(state, bad, Frozen(), 36)
  assert float(m["finite"]) == 0.0
  assert int(state.nonfinite) == 2 and int(state.skipped) == 2 and int(state.step) == 2
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  state, m = fn(state, batch(), Frozen(), 36)
  assert int(state.nonfinite) == 0 and int(state.skipped) == 2


def test_loss_functions():
  x = jnp.zeros((2, 4, 4, 3))
  y = jnp.full((2, 4, 4, 3), 0.5)
  assert float(losses.pixel_loss(x, y, "l1")) == pytest.approx(0.5)
  assert float(losses.pixel_loss(x, y, "l2")) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="l1"):
    losses.pixel_loss(x, y, "l3")
  # hinge: perfect D (real >= 1, fake <= -1) has zero loss.
  assert float(losses.hinge_d_loss(jnp.full((3,), 2.0), jnp.full((3,), -2.0))) == 0.0
  assert float(losses.hinge_d_loss(jnp.zeros(3), jnp.zeros(3))) == pytest.approx(1.0)
  assert float(losses.generator_loss(jnp.zeros(3))) == pytest.approx(np.log(2))
  ema = losses.LeCAMState(jnp.array(1.0), jnp.array(-1.0))
  reg = losses.lecam_regularizer(jnp.array([0.0, 2.0]), jnp.array([0.0, 3.0]), ema)
  assert float(reg) == pytest.approx((1 + 9) / 2 + (1 + 0) / 2)
  t = jax.random.normal(jax.random.key(0), (3, 8))
  assert float(losses.alignment_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.alignment_loss(-t, t)) > 0
  assert float(metrics.psnr(x, x)) == pytest.approx(100.0)
  assert float(metrics.psnr(x, y)) == pytest.approx(-10 * np.log10(0.0625), rel=1e-5)


def test_steps_per_k_compiled_ahead_in_threads_equal_those_compiled_on_demand():
  """StepPerK with workers (the gpu/tpu trainer) compiles every K candidate on its first
  call, concurrently, and each K's step gives what the on-demand compilation gives."""
  from mergevq_jax.train.tokenizer_step import StepPerK
  from mergevq_jax.train.tokenizer_trainer import compile_workers
  jitted = jax.jit(lambda s, b, f, k: (s * k + b[:k].sum(), f), static_argnums=(3,))
  state, batch = jnp.float32(2.0), jnp.arange(8, dtype=jnp.float32)
  ahead, on_demand = StepPerK(jitted, (2, 5, 7, 5), workers=2), StepPerK(jitted)
  assert float(ahead(state, batch, None, 5)[0]) == 2 * 5 + 10
  assert set(ahead.compiled) == {2, 5, 7}
  for k in (7, 2, 3):   # 3 is not a candidate: compiled on demand
    assert float(ahead(state, batch, None, k)[0]) == float(on_demand(state, batch, None, k)[0])
  assert ahead.num_compiled == 4 and on_demand.num_compiled == 3
  assert compile_workers("cpu", 6) == 0 and 1 <= compile_workers("tpu", 6) <= 6


def test_compilation_cache_in_the_run_directory(monkeypatch):
  from mergevq_jax.run_dir import compilation_cache_dir
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert compilation_cache_dir("auto", "tpu", "gs://bucket/run") == "gs://bucket/run/xla_cache"
  assert compilation_cache_dir("auto", "cpu", "/tmp/run") == ""
  assert compilation_cache_dir("", "gpu", "/tmp/run") == ""
  assert compilation_cache_dir("/cache", "cpu", "/tmp/run") == "/cache"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
  assert compilation_cache_dir("auto", "tpu", "/tmp/run") == ""
