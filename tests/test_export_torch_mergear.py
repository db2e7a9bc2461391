"""PyTorch MergeAR (mergevq_jax.export.torch_modules.ar) against the JAX model: the native
parameter tree loads with strict=True, teacher-forced logits agree for every merge
instruction under the training, pruned (overflowing) and causal masks, the torch cached
decoder (pruned and full cache) equals the torch full forward, greedy samples and cache
statistics equal the JAX sampler's with and without guidance, and the package imports
and samples with JAX blocked."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.bench_utils import load_config
from mergevq_jax.export import native
from mergevq_jax.models.ar import decode as md
from mergevq_jax.models.ar import merge_mask as mm
from mergevq_jax.models.ar.blocks import cross_entropy
from mergevq_jax.models.ar.mergear import MergeAR as JaxMergeAR
from mergevq_jax.export.torch_modules import ar as tar
from mergevq_jax.export.torch_modules.ar import merge_mask as tmm
from mergevq_jax.export.torch_modules.ar.blocks import cross_entropy as torch_ce
from mergevq_jax.export.torch_modules.ar.sampling import SamplingParams, filter_logits, sample

from conftest import ROOT

TOL = 1e-4
# (mask kind, W, K_cap): the training mask, a pruned mask that overflows, causal attention.
MASKS = [("merge", 4, 64), ("merge", 2, 5), ("causal", 1, 64)]


def random_params(config, seed: int = 1) -> dict[str, np.ndarray]:
  """Every parameter random (norm scales around 1, the zero-initialised heads too), sized
  so that attention is peaky (a wrong mask or cache slot moves logits by O(1)) while the
  logits stay O(10). {native name: float32 array}."""
  m = config.model
  D, F = m.width, m.ffn_dim
  std = {"wqkv": 2.0 / D ** 0.5, "wo": 1.0 / D ** 0.5, "w13": 1.0 / D ** 0.5,
         "w2": 1.0 / F ** 0.5, "heads": 2.0 / D ** 0.5}
  abstract = nnx.eval_shape(lambda: JaxMergeAR(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in native.expected_shapes(abstract).items():
    noise = rng.standard_normal(shape).astype(np.float32)
    kind = name.split(".")[1] if name.startswith("layers.") else name.split(".")[0]
    out[name] = 1.0 + 0.3 * noise if "norm" in kind else std.get(kind, 1.0) * noise
  return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """Two cores shared with other work: torch's thread pool only adds contention here."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config():
  return load_config("mergear_tiny", "cpu")


@pytest.fixture(scope="module")
def models(config):
  """(JAX model, torch model) with the same random parameters; the JAX one is built
  abstractly and filled (an eager init compiles every initializer: ~10 s)."""
  params = random_params(config)
  jm = native.load_params(nnx.eval_shape(lambda: JaxMergeAR(config, rngs=nnx.Rngs(0))), params)
  tm = tar.MergeAR(json.loads(json.dumps(config.to_dict())))   # as read from config.json
  tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in native.flat_params(jm).items()},
                     strict=True)
  return jm, tm.eval()


@pytest.fixture(scope="module")
def jax_forward(models):
  """The JAX training forward, jitted once for every mask (same shapes)."""
  graphdef, state = nnx.split(models[0])
  fn = jax.jit(lambda s, *args: nnx.merge(graphdef, s)(*args))
  return lambda *args: fn(state, *args)


@pytest.fixture(scope="module")
def batch(config):
  """4 rows, one per merge instruction (class 16 = the null class); codes drawn from 12
  random 18-bit codes so that they repeat (merged groups) and K_cap=5 overflows."""
  rng = np.random.default_rng(0)
  pool = rng.choice(2 ** config.model.code_bits, 12, replace=False)
  codes = pool[rng.integers(0, len(pool), (4, 64))].astype(np.int32)
  return codes, np.array([0, 5, 16, 9], np.int32), np.arange(4, dtype=np.int32)


def diff(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def tt(a):
  return torch.from_numpy(np.asarray(a)).long()


def jax_mask(codes, kind, window, keep_cap):
  return mm.attention_mask(jnp.asarray(codes), kind, window, keep_cap)


def test_parameter_names_and_shapes(models, config):
  jm, tm = models
  assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == native.expected_shapes(jm)
  fresh = tar.MergeAR(config.to_dict())
  assert float(fresh.heads[1].detach().abs().max()) == 0.0   # zero-initialised, as in JAX
  assert not any(k.startswith("rope") for k in tm.state_dict())


@pytest.mark.parametrize("kind, window, keep_cap", MASKS)
def test_teacher_forced_logits_match_jax(models, jax_forward, batch, kind, window, keep_cap):
  _, tm = models
  codes, cls, keep = batch
  mask = jax_mask(codes, kind, window, keep_cap)
  expected = jax_forward(jnp.asarray(codes), jnp.asarray(cls), jnp.asarray(keep), mask)
  tmask = tmm.attention_mask(tt(codes), kind, window, keep_cap)
  np.testing.assert_array_equal(tmask.numpy(), np.asarray(mask))
  with torch.no_grad():
    got = tm(tt(codes), tt(cls), tt(keep), tmask)
  d = diff(expected, [g.numpy() for g in got])
  print(f"teacher-forced {kind} W={window} K_cap={keep_cap}: max |torch - jax| = {d:.2e}")
  assert d <= TOL
  assert max(float(np.abs(np.asarray(e)).max()) for e in expected) > 5   # not degenerate
  if kind == "merge" and window == 4:        # the default mask is the training mask
    with torch.no_grad():
      assert diff(got, tm(tt(codes), tt(cls), tt(keep))) == 0.0
    bits = tm.sub_code_bits
    jloss, jmetrics = cross_entropy(expected, jnp.asarray(codes), bits)
    tloss, tmetrics = torch_ce(got, tt(codes), bits)
    assert abs(float(jloss) - float(tloss)) < 1e-4
    assert {k: round(float(v), 5) for k, v in jmetrics.items() if k.startswith("acc")} == \
        {k: round(float(v), 5) for k, v in tmetrics.items() if k.startswith("acc")}


@pytest.mark.parametrize("kind, window, keep_cap", MASKS)
def test_cached_decoder_equals_full_forward(models, batch, kind, window, keep_cap):
  """The torch sampler's step-by-step path (prefill + feed_code over the pruned or the full
  cache) fed the codes equals the torch full forward under the same rule."""
  _, tm = models
  codes, cls, keep = map(tt, batch)
  with torch.no_grad():
    full = tm(codes, cls, keep, tmm.attention_mask(codes, kind, window, keep_cap))
    wrong = tm(codes, cls, keep, tmm.attention_mask(codes, kind, window + 1, keep_cap))
  cached, stats = tm.teacher_forced_logits(codes, cls, keep, keep_cap=keep_cap, mode=kind,
                                           window=window)
  d = diff(full, cached)
  print(f"cached {kind} W={window} K_cap={keep_cap}: max |cached - full| = {d:.2e}")
  assert d <= TOL
  if kind == "merge":
    assert diff(wrong, cached) > 1e-2          # the comparison is sharp
    assert stats.kept_slots_used.tolist() == tmm.kept_positions(codes, keep_cap).sum(-1).tolist()
    assert stats.overflow.tolist() == tmm.overflow_positions(codes, keep_cap).sum(-1).tolist()
  else:
    assert stats.kept_slots_used.tolist() == [64] * 4 and stats.overflow.tolist() == [0] * 4


def test_cache_statistics_match_jax(models, batch):
  """Kept slots and overflow of the torch pruned cache fed the codes equal JAX's (its
  closed-form rule, which tests/test_mergear.py checks against the JAX cache); the
  greedy tests below compare them with the JAX sampler's."""
  _, tm = models
  codes, cls, keep = batch
  for window, keep_cap in [(2, 5), (4, 9), (1, 64)]:
    _, stats = tm.teacher_forced_logits(tt(codes), tt(cls), tt(keep), keep_cap=keep_cap,
                                        mode="merge", window=window)
    kept = np.asarray(mm.kept_positions(jnp.asarray(codes), keep_cap)).sum(-1)
    overflow = np.asarray(mm.overflow_positions(jnp.asarray(codes), keep_cap)).sum(-1)
    assert stats.kept_slots_used.tolist() == kept.tolist()
    assert stats.overflow.tolist() == overflow.tolist()
    assert (min(overflow) > 0) == (keep_cap < 12)


GREEDY = dict(ids=[3, 7, 11], num_keep=25, keep_cap=30, window=2)
GREEDY_CASES = [(mode, cfg) for mode in ("merge", "causal") for cfg in (1.0, 3.0)]


@pytest.fixture(scope="module")
def jax_greedy(models):
  """{(cache mode, cfg scale): (codes, stats)} of the JAX sampler (`decode.generate`, as
  `Generator` calls it), greedy, guidance on for cfg != 1. The four cases compile as one
  program: half the compile time of four `Generator`s."""
  jm = models[0]
  graphdef, state = nnx.split(jm)
  g = GREEDY
  layouts = {mode: md.Generator(jm, window=g["window"], mode=mode).layout(g["keep_cap"])
             for mode, _ in GREEDY_CASES}
  ids = jnp.asarray(g["ids"], jnp.int32)
  keep = jnp.full(ids.shape, jm.keep_index(g["num_keep"]), jnp.int32)

  @jax.jit
  def run(state, key):
    model = nnx.merge(graphdef, state)
    return [md.generate(model, layouts[mode], key, ids, keep,
                        md.SamplingParams.make(0.0, 0, 1.0, cfg), cfg != 1.0)
            for mode, cfg in GREEDY_CASES]

  return dict(zip(GREEDY_CASES, run(state, jax.random.key(0))))


@pytest.mark.parametrize("mode, cfg_scale", GREEDY_CASES)
def test_greedy_sample_matches_jax(models, jax_greedy, mode, cfg_scale):
  _, tm = models
  g = GREEDY
  jcodes, jstats = jax_greedy[(mode, cfg_scale)]
  tcodes, tstats = tm.generate(g["ids"], g["num_keep"], keep_cap=g["keep_cap"],
                               temperature=0.0, cfg_scale=cfg_scale, mode=mode,
                               window=g["window"])
  np.testing.assert_array_equal(tcodes.numpy(), np.asarray(jcodes))
  assert tstats.kept_slots_used.tolist() == np.asarray(jstats.kept_slots_used).tolist()
  assert tstats.overflow.tolist() == np.asarray(jstats.overflow).tolist()
  distinct = [len(set(row)) for row in tcodes.tolist()]
  print(f"greedy {mode} cfg={cfg_scale}: distinct codes {distinct}, kept "
        f"{tstats.kept_slots_used.tolist()}, overflow {tstats.overflow.tolist()}")
  assert max(distinct) > 1                       # a non-degenerate sequence
  if mode == "merge":
    assert min(tstats.overflow.tolist()) > 0     # the pruned cache overflows here
    assert tstats.kept_slots_used.tolist() == tmm.kept_positions(
        tcodes, g["keep_cap"]).sum(-1).tolist()
  else:
    assert tstats.kept_slots_used.tolist() == [64] * 3


def test_random_sampling_controls(models):
  _, tm = models
  a, _ = tm.generate([1, 2], 36, temperature=1.0, top_k=5, top_p=0.9, cfg_scale=2.0, seed=3)
  b, _ = tm.generate([1, 2], 36, temperature=1.0, top_k=5, top_p=0.9, cfg_scale=2.0,
                     generator=torch.Generator().manual_seed(3))
  assert torch.equal(a, b) and a.shape == (2, 64) and int(a.max()) < 2 ** 18
  # top_k=1 keeps only each head's argmax: the greedy codes.
  c, _ = tm.generate([1, 2], 36, temperature=0.7, top_k=1, seed=0)
  g, _ = tm.generate([1, 2], 36, temperature=0.0)
  assert torch.equal(c, g)


def test_sampling_filters():
  logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda k, p: torch.isfinite(filter_logits(logits, k, p))[0].tolist()
  assert kept(2, 1.0) == [True, True, False, False, False]
  assert kept(0, 0.6) == [True, True, False, False, False]
  assert kept(0, 0.3) == [True, False, False, False, False]
  assert kept(0, 1.0) == [True] * 5
  assert kept(4, 0.8) == [True, True, True, False, False]
  gen = torch.Generator().manual_seed(0)
  draw = lambda params: torch.bincount(sample(logits.expand(20000, 5), params, gen),
                                       minlength=5).numpy() / 20000
  np.testing.assert_allclose(draw(SamplingParams.make(1.0)), [0.5, 0.2, 0.15, 0.1, 0.05],
                             atol=0.015)
  np.testing.assert_allclose(draw(SamplingParams.make(1.0, top_k=2)), [5 / 7, 2 / 7, 0, 0, 0],
                             atol=0.015)
  assert set(draw(SamplingParams.make(0.0)).nonzero()[0].tolist()) == {0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_ids=[16]), r"class ids must be in \[0, 16\)"),
    (dict(num_keep=5), "K=5 is not a merge instruction"),
    (dict(keep_cap=3), "K_cap=3 is smaller than"),
    (dict(cfg_scale=-1.0), "CFG scale"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-0.1), "temperature"),
    (dict(mode="full"), "cache mode"),
])
def test_bad_generate_inputs(models, kwargs, match):
  _, tm = models
  args = dict(class_ids=[1], num_keep=25) | kwargs
  with pytest.raises(ValueError, match=match):
    tm.generate(args.pop("class_ids"), args.pop("num_keep"), **args)


def test_config_errors(config):
  for key, value, match in [("sub_code_bits", [6, 6], "sum"), ("window", 0, "window"),
                            ("keep_values", [300], "keep_values"),
                            ("attention", "full", "attention"), ("num_heads", 3, "num_heads")]:
    c = config.to_dict()
    c["model"][key] = value
    with pytest.raises(ValueError, match=match):
      tar.MergeAR(c)
  with pytest.raises(ValueError, match="dtype"):
    tar.MergeAR(config.to_dict() | {"dtype": "float16"})
  tar.MergeAR(config.to_dict() | {"dtype": "bfloat16"})    # accepted, computes in float32


BLOCKED_IMPORT = r"""
import importlib.abc, json, sys
BLOCKED = ("jax", "jaxlib", "flax", "ml_collections", "orbax")
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import torch
torch.set_num_threads(1)
from mergevq_jax.export.torch_modules.ar import MergeAR
config = json.loads(sys.stdin.read())
torch.manual_seed(0)
model = MergeAR(config)
with torch.no_grad():
  for head in model.heads:
    head.normal_(0, 0.3)
out = {}
for mode in ("merge", "causal"):
  codes, stats = model.generate([1, 2], 25, temperature=0.0, cfg_scale=2.0, mode=mode)
  out[mode] = [list(codes.shape), stats.kept_slots_used.tolist(), stats.overflow.tolist()]
bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
# the pure-Python modules shared with the JAX models (stdlib only) may load; nothing else
shared = ("mergevq_jax.models", "mergevq_jax.models.hparams", "mergevq_jax.models.merge_schedule",
          "mergevq_jax.models.ar", "mergevq_jax.models.ar.hparams",
          "mergevq_jax.models.ar.cache_layout")
leaked = sorted(m for m in sys.modules if m.startswith("mergevq_jax")
                and not m.startswith("mergevq_jax.export.torch_modules")
                and m not in ("mergevq_jax", "mergevq_jax.export",
                              "mergevq_jax.export.export_dir", "mergevq_jax.export.authors")
                and m not in shared)
print(json.dumps({"out": out, "bad": bad, "leaked": leaked}))
"""


def test_imports_and_samples_without_jax(config):
  proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, input=json.dumps(config.to_dict()))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["bad"] == [] and result["leaked"] == []
  assert result["out"]["merge"][0] == [2, 64]
  assert result["out"]["causal"][1:] == [[64, 64], [0, 0]]
