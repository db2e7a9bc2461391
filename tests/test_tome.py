"""ToMe: schedule, invariants of the source, and equality with a brute-force reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergevq_jax.models import tome


def test_schedule_matches_reference_for_gr():
  assert tome.merge_schedule(12, 256, 144) == (12, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 5)


@pytest.mark.parametrize("L,K", [(256, 121), (256, 144), (256, 169), (256, 196), (256, 225),
                                 (1024, 256), (256, 36), (64, 36)])
def test_schedule_sums_and_decreases(L, K):
  r = tome.merge_schedule(12, L, K)
  assert sum(r) == L - K
  assert all(a >= b for a, b in zip(r[1:], r[2:]))  # non-increasing after the first block


@pytest.mark.parametrize("L", [64, 256, 1024])
def test_schedule_valid_for_every_k_from_half_to_all(L):
  for K in range(L // 2, L + 1):
    r = tome.merge_schedule(12, L, K)
    assert sum(r) == L - K and min(r) >= 0


def test_merging_half_of_the_tokens_in_a_block():
  """r at its maximum (half the patch tokens), odd and even token counts."""
  for n in (16, 17):
    x, metrics = random_inputs(num_patches=n, steps=1, seed=n)
    out, state = run_merges(x, metrics, (n // 2,))
    assert out.shape[1] == 1 + n - n // 2
    np.testing.assert_array_equal(np.asarray(state.size[:, 0]), 1)  # [CLS] kept
    np.testing.assert_array_equal(np.asarray(state.size[:, 1:]).sum(-1), n)


def test_schedule_identity_and_errors():
  assert tome.merge_schedule(12, 256, 256) == (0,) * 12
  with pytest.raises(ValueError, match=r"\[1, L=256\]"):
    tome.merge_schedule(12, 256, 257)
  with pytest.raises(ValueError, match="not reachable"):
    tome.merge_schedule(2, 64, 4)  # 60 merges in 2 blocks: more than half per block
  with pytest.raises(ValueError, match="Python int"):
    tome.merge_schedule(12, 256, jnp.int32(144))


def brute_force_merge(x, metric, size, positions, r):
  """Per-sample reference of one ToMe step with explicit Python loops.

  x: (N, D), metric: (N, C), size: (N,), positions: list of sets of original patch
  positions per token ([CLS] has the empty set). Returns (x', size', positions').
  """
  n = len(x)
  a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
  unit = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  best_score, best_b = {}, {}
  for i, ai in enumerate(a_idx):
    if ai == 0:
      continue
    sims = [float(unit[ai] @ unit[bj]) for bj in b_idx]
    best_b[i] = int(np.argmax(sims))
    best_score[i] = max(sims)
  ranked = sorted(best_score, key=lambda i: (-best_score[i], i))
  merged = set(ranked[:r])
  acc = {j: x[bj] * size[bj] for j, bj in enumerate(b_idx)}
  b_size = {j: size[bj] for j, bj in enumerate(b_idx)}
  b_pos = {j: set(positions[bj]) for j, bj in enumerate(b_idx)}
  for i in sorted(merged):
    j = best_b[i]
    acc[j] = acc[j] + x[a_idx[i]] * size[a_idx[i]]
    b_size[j] += size[a_idx[i]]
    b_pos[j] |= positions[a_idx[i]]
  keep_a = [i for i in range(len(a_idx)) if i not in merged]
  new_x = [x[a_idx[i]] for i in keep_a] + [acc[j] / b_size[j] for j in range(len(b_idx))]
  new_size = [size[a_idx[i]] for i in keep_a] + [b_size[j] for j in range(len(b_idx))]
  new_pos = [positions[a_idx[i]] for i in keep_a] + [b_pos[j] for j in range(len(b_idx))]
  return np.stack(new_x), np.array(new_size), new_pos


def run_merges(x, metrics, schedule):
  state = tome.init_merge_state(x.shape[0], x.shape[1] - 1)
  for metric, r in zip(metrics, schedule):
    x, state = tome.merge_step(x, metric[:, :x.shape[1]], state, r)
  return x, state


def random_inputs(batch=3, num_patches=24, dim=5, steps=3, seed=0):
  keys = jax.random.split(jax.random.key(seed), steps + 1)
  x = jax.random.normal(keys[0], (batch, num_patches + 1, dim))
  metrics = [jax.random.normal(k, (batch, num_patches + 1, 4)) for k in keys[1:]]
  return x, metrics


def test_matches_brute_force():
  schedule = (5, 4, 3)
  x, metrics = random_inputs(steps=len(schedule))
  out, state = run_merges(x, metrics, schedule)
  for b in range(x.shape[0]):
    xb = np.asarray(x[b], np.float64)
    size = np.ones(len(xb))
    pos = [set()] + [{l} for l in range(len(xb) - 1)]
    for metric, r in zip(metrics, schedule):
      xb, size, pos = brute_force_merge(xb, np.asarray(metric[b, :len(xb)], np.float64),
                                        size, pos, r)
    np.testing.assert_allclose(np.asarray(out[b]), xb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.size[b]), size)
    owner = np.asarray(state.owner[b])
    for k, p in enumerate(pos[1:]):  # rows of S are the position sets of patch tokens
      assert set(np.flatnonzero(owner == k)) == p


def test_source_invariants():
  schedule = (8, 6, 4, 2)
  x, metrics = random_inputs(num_patches=40, steps=len(schedule), seed=1)
  out, state = run_merges(x, metrics, schedule)
  K = out.shape[1] - 1
  assert K == 40 - sum(schedule)
  S = np.asarray(tome.source_matrix(state.owner, K))
  assert S.shape == (3, K, 40)
  np.testing.assert_array_equal(S.sum(axis=1), 1)  # every column one-hot
  np.testing.assert_array_equal(S.sum(axis=2), np.asarray(state.size[:, 1:]))  # rows = sizes
  np.testing.assert_array_equal(np.asarray(state.size[:, 1:]).sum(-1), 40)  # sizes sum to L
  assert np.all(np.asarray(state.size[:, 0]) == 1)  # [CLS] never merged
  np.testing.assert_array_equal(np.asarray(tome.owner_from_source(S)), np.asarray(state.owner))


def test_zero_merges_is_identity():
  x, metrics = random_inputs(steps=2)
  out, state = run_merges(x, metrics, (0, 0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(state.owner), np.tile(np.arange(24), (3, 1)))
  np.testing.assert_array_equal(np.asarray(tome.source_matrix(state.owner, 24))[0], np.eye(24))


def test_unmerge_equals_dense_source_product():
  x, metrics = random_inputs(steps=2, seed=2)
  out, state = run_merges(x, metrics, (6, 5))
  tokens = out[:, 1:]
  S = tome.source_matrix(state.owner, tokens.shape[1])
  dense = jnp.einsum("bkl,bkd->bld", S, tokens)
  np.testing.assert_allclose(np.asarray(tome.unmerge(tokens, state.owner)), np.asarray(dense),
                             rtol=1e-6)


def test_jit_with_static_schedule_equals_eager():
  schedule = (5, 4, 3)
  x, metrics = random_inputs(steps=3, seed=3)
  eager = run_merges(x, metrics, schedule)
  jitted = jax.jit(run_merges, static_argnums=2)(x, metrics, schedule)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_proportional_attention_bias():
  size = jnp.array([[1.0, 2.0, 4.0]])
  np.testing.assert_allclose(np.asarray(tome.attention_bias(size))[0, 0, 0], np.log([1, 2, 4]))
