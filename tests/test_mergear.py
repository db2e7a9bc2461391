"""MergeAR: the merge mask against a literal walk of the spec's rule, the cached scan
decoder against the full masked forward (overflow included), plain causal attention,
greedy decoding against the argmax chain of full forwards, and no recompilation when
sampling controls change."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mergevq_jax.config.mergear import mergear_defaults, validate_mergear_config
from mergevq_jax.models.ar import merge_mask as mm
from mergevq_jax.models.ar import decode as md
from mergevq_jax.models.ar.kv_cache import CacheLayout
from mergevq_jax.models.layers import count_params
from mergevq_jax.models.ar.blocks import apply_rope, join_codes, rope_angles, split_codes
from mergevq_jax.models.ar.mergear import PREFIX, MergeAR

from conftest import load_config

L = 16          # 4 x 4 code grid
VOCAB = 12      # codes drawn from a small range so that they repeat


def small_config(platform="cpu", **model):
  """platform 'cpu': the decoder unrolls its layers; 'tpu': it scans over them."""
  c = mergear_defaults()
  c.platform = platform
  m = c.model
  m.width, m.num_layers, m.num_heads, m.ffn_dim = 32, 2, 2, 64
  m.grid, m.keep_values, m.num_classes = (4, 4), (4, 8), 10
  m.code_bits, m.sub_code_bits = 6, (2, 4)
  m.update(model)
  return c


def randomized(model: MergeAR, scale: float = 0.5, seed: int = 1) -> MergeAR:
  """Large random weights (incl. the zero-initialised heads): peaky attention, so a wrong
  mask or cache slot changes the logits by O(1)."""
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return nnx.merge(graphdef, jax.tree.unflatten(
      tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))


@pytest.fixture(scope="module")
def model(request):
  """The small MergeAR; indirect parametrization picks the platform (default 'cpu')."""
  platform = getattr(request, "param", "cpu")
  return randomized(MergeAR(small_config(platform), rngs=nnx.Rngs(0)))


BOTH_DECODERS = pytest.mark.parametrize("model", ["cpu", "tpu"], indirect=True)


@pytest.fixture(scope="module")
def batch():
  codes = jax.random.randint(jax.random.key(0), (3, L), 0, VOCAB)
  return codes, jnp.array([1, 2, 3]), jnp.array([0, 1, 0])


def walk_rule(codes, window, keep_cap):
  """The spec's rule, literally: a set walked in raster order. Returns mask, kept, overflow."""
  kept_set, kept, overflow = [], [], 0
  for c in codes:
    is_kept = c not in kept_set and len(kept_set) < keep_cap
    overflow += c not in kept_set and not is_kept
    if is_kept:
      kept_set.append(c)
    kept.append(is_kept)
  n = len(codes)
  mask = np.array([[j <= i and (kept[j] or j > i - window) for j in range(n)]
                   for i in range(n)])
  return mask, np.array(kept), overflow


@pytest.mark.parametrize("window, keep_cap", [(1, 16), (3, 5), (4, 2), (2, 1), (16, 16)])
def test_merge_mask_matches_literal_rule(window, keep_cap):
  codes = np.asarray(jax.random.randint(jax.random.key(window + 7 * keep_cap), (4, 24), 0, 9))
  mask = np.asarray(mm.merge_mask(jnp.asarray(codes), window, keep_cap))
  overflow = np.asarray(mm.overflow_positions(jnp.asarray(codes), keep_cap)).sum(-1)
  for b in range(codes.shape[0]):
    ref_mask, ref_kept, ref_overflow = walk_rule(list(codes[b]), window, keep_cap)
    np.testing.assert_array_equal(mask[b], ref_mask)
    np.testing.assert_array_equal(np.asarray(mm.kept_positions(jnp.asarray(codes),
                                                                keep_cap))[b], ref_kept)
    assert overflow[b] == ref_overflow


def test_merge_mask_without_pruning_is_causal(batch):
  codes = batch[0]
  np.testing.assert_array_equal(mm.merge_mask(codes, L, L), mm.causal_mask(3, L))
  distinct = jnp.tile(jnp.arange(L)[None], (2, 1))
  np.testing.assert_array_equal(mm.merge_mask(distinct, 1, L), mm.causal_mask(2, L))


def max_diff(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("window, keep_cap", [(1, 16), (3, 5), (4, 2), (16, 16)])
@BOTH_DECODERS
def test_cached_decoder_equals_masked_forward(model, batch, window, keep_cap):
  codes, cls, keep = batch
  full = model(codes, cls, keep, mm.merge_mask(codes, window, keep_cap))
  layout = CacheLayout.make(PREFIX, L, "merge", keep_cap, window)
  cached, stats = jax.jit(lambda c: md.teacher_forced_logits(model, layout, c, cls, keep))(codes)
  assert max_diff(full, cached) < 1e-4
  np.testing.assert_array_equal(stats.kept_slots_used,
                                mm.kept_positions(codes, keep_cap).sum(-1))
  np.testing.assert_array_equal(stats.overflow, mm.overflow_positions(codes, keep_cap).sum(-1))
  if keep_cap < 8:
    assert int(stats.overflow.min()) > 0           # these cases do overflow
  # The comparison is sharp: a neighbouring rule gives clearly different logits.
  if window < L:
    wrong = model(codes, cls, keep, mm.merge_mask(codes, window + 1, keep_cap))
    assert max_diff(wrong, cached) > 1e-2


@BOTH_DECODERS
def test_causal_cache_equals_causal_forward(model, batch):
  codes, cls, keep = batch
  full = model(codes, cls, keep, mm.causal_mask(3, L))
  cached, stats = md.teacher_forced_logits(model, CacheLayout.make(PREFIX, L, "causal"),
                                           codes, cls, keep)
  assert max_diff(full, cached) < 1e-4
  assert stats.kept_slots_used.tolist() == [L] * 3
  # Pruning disabled (K_cap = L) on distinct codes: the merge cache is causal attention.
  distinct = jnp.tile(jax.random.permutation(jax.random.key(2), L)[None], (3, 1))
  merge, _ = md.teacher_forced_logits(model, CacheLayout.make(PREFIX, L, "merge", L, 1),
                                      distinct, cls, keep)
  assert max_diff(model(distinct, cls, keep, mm.causal_mask(3, L)), merge) < 1e-4


def argmax_chain(model, cls, keep, window, keep_cap):
  """Greedy codes by repeated full forwards under mask(codes, W, K_cap): at step t the
  codes so far (zero-padded to L; the mask is causal, so padding is invisible) go through
  `run_layers`, and the hidden state predicting code t is read off."""
  bits = model.config.model.sub_code_bits

  @jax.jit
  def next_code(codes, t):
    x = jnp.concatenate([model.embed_prefix(cls, keep), model.embed_codes(codes[:, :-1])], 1)
    visible = mm.sequence_mask(mm.merge_mask(codes, window, keep_cap)[:, :-1, :-1], PREFIX)
    h = model.run_layers(x, model.input_angles(L - 1), visible)[:, PREFIX - 1 + t]
    subs = []
    for k in range(len(bits)):
      subs.append(jnp.argmax(model.head_logits(h, k, subs), axis=-1).astype(jnp.int32))
    return join_codes(subs, bits)

  codes = jnp.zeros((cls.shape[0], L), jnp.int32)
  for t in range(L):
    codes = codes.at[:, t].set(next_code(codes, t))
  return codes


@BOTH_DECODERS
def test_greedy_decode_equals_argmax_chain(model, batch):
  _, cls, keep = batch
  gen = md.Generator(model, window=3)
  codes, stats = gen(jax.random.key(0), np.asarray(cls), num_keep=4, keep_cap=5,
                     temperature=0.0)
  expected = argmax_chain(model, cls, jnp.zeros_like(cls), 3, 5)
  np.testing.assert_array_equal(codes, expected)
  np.testing.assert_array_equal(stats.kept_slots_used, mm.kept_positions(codes, 5).sum(-1))


def test_changing_sampling_controls_does_not_recompile(model):
  gen = md.Generator(model)
  for i, (t, k, p, s, ids, K) in enumerate([(1.0, 0, 1.0, 2.0, [1, 2], 4),
                                             (0.7, 5, 0.9, 4.0, [3, 9], 8),
                                             (0.0, 1, 0.5, 0.0, [0, 0], 8)]):
    codes, _ = gen(jax.random.key(i), ids, num_keep=K, keep_cap=8, temperature=t, top_k=k,
                   top_p=p, cfg_scale=s, guidance=True)
    assert codes.shape == (2, L) and int(codes.max()) < 2 ** 6
  assert gen.compilations() == 1
  gen(jax.random.key(5), [1, 2], num_keep=4, keep_cap=6, guidance=True)  # new cache shape
  assert gen.compilations() == 2


def test_guidance_scale_one_equals_conditional_rows(model):
  gen = md.Generator(model)
  a, _ = gen(jax.random.key(3), [1, 4], num_keep=8, guidance=True, cfg_scale=1.0)
  b, _ = gen(jax.random.key(3), [1, 4], num_keep=8, guidance=False)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_ids=[10]), r"class ids must be in \[0, 10\)"),
    (dict(class_ids=[-1]), "class ids"),
    (dict(num_keep=5), "K=5 is not a merge instruction"),
    (dict(keep_cap=3), "K_cap=3 is smaller than"),
    (dict(cfg_scale=-1.0), "CFG scale"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.1), "temperature"),
])
def test_bad_sampling_inputs(model, kwargs, match):
  args = dict(class_ids=[1], num_keep=4) | kwargs
  with pytest.raises(ValueError, match=match):
    md.Generator(model)(jax.random.key(0), **args)


def test_split_join_codes_roundtrip():
  codes = jax.random.randint(jax.random.key(0), (100,), 0, 2 ** 18)
  subs = split_codes(codes, (6, 12))
  assert int(subs[0].max()) < 64 and int(subs[1].max()) < 4096
  np.testing.assert_array_equal(subs[0], codes >> 12)
  np.testing.assert_array_equal(join_codes(subs, (6, 12)), codes)


def test_rope_2d_scores_depend_on_relative_offset():
  angles = rope_angles((4, 4), 8, 10000.0)           # (16, 4)
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
  rot = lambda x, i: apply_rope(x, angles[i][None, None])
  score = lambda i, j: float(jnp.sum(rot(q, i) * rot(k, j)))
  # (row, col) offsets: (1, 1) between positions 0->5 and 10->15; (0, 1) between 4->5, 8->9.
  assert score(0, 5) == pytest.approx(score(10, 15), abs=1e-5)
  assert score(4, 5) == pytest.approx(score(8, 9), abs=1e-5)
  assert abs(score(0, 5) - score(0, 4)) > 1e-3
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 7)), jnp.linalg.norm(q), rtol=1e-6)


def test_mergear_l_matches_llamagen_l_body():
  c = load_config("mergear_l")
  m = nnx.eval_shape(lambda: MergeAR(c, rngs=nnx.Rngs(0)))
  body = count_params(nnx.state(m, nnx.Param)["layers"])
  D, F = 1024, 2816
  assert body == 24 * (4 * D * D + 3 * D * F + 2 * D)  # LlamaGen-L's 24 blocks
  # 343M in LlamaGen-L includes a 16,384-code embedding + head (33.6M); the factorised
  # 2^6 + 2^12 vocabulary of a 2^18 codebook needs 8.5M instead.
  assert 310e6 < count_params(m) < 325e6


def test_config_errors():
  for key, value, match in [("sub_code_bits", (6, 6), "sum"), ("window", 0, "window"),
                            ("keep_values", (300,), "keep_values"),
                            ("attention", "full", "attention"), ("num_heads", 3, "num_heads")]:
    c = small_config(**{key: value})
    with pytest.raises(ValueError, match=match):
      validate_mergear_config(c)


def test_sharded_decode_equals_single_device():
  """Decode over 8 fake CPU devices (mesh data x fsdp x tensor = 2 x 2 x 2) equals one
  device: teacher-forced logits, slot statistics, sampled and greedy codes."""
  import json
  import subprocess
  import sys
  from conftest import ROOT
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "mergear_sharding_worker.py")],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  for mesh, r in results.items():
    assert r["logits_max_diff"] < 1e-4, mesh
    assert r["stats_equal"] and r["sampled_equal"] and r["greedy_equal"], (mesh, r)
    assert r["codes_spec"][0] != "None", mesh          # the batch stays split
  assert results["2x2x2"]["wqkv_spec"] == ["None", "fsdp", "None", "tensor", "None"]


def test_sampling_filters():
  from mergevq_jax.models.ar.sampling import SamplingParams, filter_logits, sample
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, jnp.int32(k),
                                                           jnp.float32(p))))[0].tolist()
  assert kept(2, 1.0) == [True, True, False, False, False]
  assert kept(0, 0.6) == [True, True, False, False, False]     # 0.5 < 0.6 <= 0.7
  assert kept(0, 0.3) == [True, False, False, False, False]
  assert kept(0, 1.0) == [True] * 5
  assert kept(4, 0.8) == [True, True, True, False, False]
  keys = jax.random.split(jax.random.key(0), 20000)
  draw = jax.vmap(lambda k, p: sample(k, logits, p)[0], in_axes=(0, None))
  freq = np.bincount(np.asarray(draw(keys, SamplingParams.make(1.0, 0, 1.0))), minlength=5)
  np.testing.assert_allclose(freq / 20000, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.015)
  freq = np.bincount(np.asarray(draw(keys, SamplingParams.make(1.0, 2, 1.0))), minlength=5)
  np.testing.assert_allclose(freq / 20000, [5 / 7, 2 / 7, 0, 0, 0], atol=0.015)
  assert set(np.asarray(draw(keys[:50], SamplingParams.make(0.0, 0, 1.0))).tolist()) == {0}


@pytest.mark.parametrize("vocab", [4096, 60, 7])
def test_inverse_cdf_draw_matches_softmax(vocab):
  """Two-level inverse-CDF draws follow softmax(logits); masked tokens never come up."""
  from mergevq_jax.models.ar.sampling import inverse_cdf_draw
  logits = jax.random.normal(jax.random.key(vocab), (1, vocab)) * 2
  logits = logits.at[0, ::3].set(-jnp.inf)               # filtered tokens
  keys = jax.random.split(jax.random.key(1), 40000)
  draws = np.asarray(jax.vmap(lambda k: inverse_cdf_draw(k, logits)[0])(keys))
  probs = np.asarray(jax.nn.softmax(logits[0]))
  assert not np.any(draws % 3 == 0)
  freq = np.bincount(draws, minlength=vocab) / len(draws)
  # total variation against the exact distribution (sampling noise ~ sqrt(V / n))
  assert 0.5 * np.abs(freq - probs).sum() < 0.03 + 0.5 * np.sqrt(vocab / len(draws))
  cdf = np.cumsum(probs)
  for q in (0.1, 0.5, 0.9):
    assert abs(np.searchsorted(cdf, q) - np.percentile(draws, 100 * q)) <= max(2, vocab // 50)
