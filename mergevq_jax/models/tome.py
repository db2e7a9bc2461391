"""Token merging (ToMe bipartite soft matching) with size and source tracking.

Pure `jnp` functions, no module state. Token axis layout everywhere: index 0 is the
[CLS] token (never merged), indices 1..N-1 are patch tokens or merged groups of them.

Source tracking. The paper's source matrix S in {0,1}^{K x L} has exactly one 1 per
column, so we carry it as its column index instead: `owner[b, l]` is the token
(row of S, counting patch tokens only, i.e. excluding [CLS]) that original position l
was merged into. `source_matrix(owner, K)` gives the dense S; `unmerge(tokens, owner)`
is S^T Z_K as a gather. Both views are exactly equivalent; the index costs L ints
instead of K x L floats and makes S^T Z a gather instead of a matmul.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# The merge schedule is pure Python, shared with the PyTorch port; re-exported here.
from mergevq_jax.models.merge_schedule import check_schedule, merge_schedule  # noqa: F401


class MergeState(NamedTuple):
  """What a ToMe encoder carries between blocks.

  size:   (B, N) float, how many original patch positions each token stands for
          ([CLS] has size 1 and is never merged).
  owner:  (B, L) int32, index into the N-1 patch tokens that owns each original position.
  anchor: (B, N-1) int32, the original position of each patch token's surviving line
          (the patch that was never merged away: where the kept token "sits").
  """
  size: jax.Array
  owner: jax.Array
  anchor: jax.Array


def init_merge_state(batch: int, num_patches: int) -> MergeState:
  """Identity state for a sequence of [CLS] + `num_patches` tokens."""
  size = jnp.ones((batch, num_patches + 1), jnp.float32)
  owner = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
  return MergeState(size=size, owner=owner, anchor=owner)


# ----------------------------------------------------------------------------- matching


class Matching(NamedTuple):
  """Result of bipartite soft matching on N tokens (N_a in set A, N_b in set B).

  unmerged: (B, N_a - r) int, A-indices that stay, ascending (so [CLS] stays first).
  merged:   (B, r) int, A-indices merged away.
  dest:     (B, r) int, B-index each merged A token goes into.
  """
  unmerged: jax.Array
  merged: jax.Array
  dest: jax.Array


def bipartite_matching(metric: jax.Array, r: int) -> Matching:
  """ToMe bipartite soft matching.

  metric: (B, N, C) similarity features (keys averaged over heads), token 0 = [CLS].
  Tokens are split alternately: A = even indices, B = odd indices. Each A token picks
  its most similar (cosine) B token; the r A tokens with the highest scores merge.
  """
  metric = metric.astype(jnp.float32)
  metric = metric / jnp.maximum(jnp.linalg.norm(metric, axis=-1, keepdims=True), 1e-12)
  a, b = metric[:, ::2], metric[:, 1::2]
  scores = jnp.einsum("bic,bjc->bij", a, b)
  scores = scores.at[:, 0, :].set(-jnp.inf)  # protect [CLS]
  best = jnp.max(scores, axis=-1)
  best_idx = jnp.argmax(scores, axis=-1)
  order = jnp.argsort(-best, axis=-1, stable=True)
  merged = order[:, :r]
  unmerged = jnp.sort(order[:, r:], axis=-1)
  dest = jnp.take_along_axis(best_idx, merged, axis=-1)
  return Matching(unmerged=unmerged, merged=merged, dest=dest)


def _scatter_sum(dst: jax.Array, idx: jax.Array, src: jax.Array) -> jax.Array:
  """dst[b, idx[b, i]] += src[b, i] for (B, Nb, ...) dst and (B, r, ...) src."""
  return jax.vmap(lambda d, i, s: d.at[i].add(s))(dst, idx, src)


def merge_tokens(x: jax.Array, m: Matching, size: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Size-weighted average merge.

  x: (B, N, D) tokens, size: (B, N). Returns (x', size') with N - r tokens in the
  order [unmerged A tokens, all B tokens].
  """
  dtype = x.dtype
  xs = x.astype(jnp.float32) * size[..., None]
  xa, xb = xs[:, ::2], xs[:, 1::2]
  sa, sb = size[:, ::2], size[:, 1::2]
  take = lambda v, idx: jnp.take_along_axis(v, idx[..., None] if v.ndim == 3 else idx, axis=1)
  xb = _scatter_sum(xb, m.dest, take(xa, m.merged))
  sb = _scatter_sum(sb, m.dest, take(sa, m.merged))
  new_x = jnp.concatenate([take(xa, m.unmerged), xb], axis=1)
  new_size = jnp.concatenate([take(sa, m.unmerged), sb], axis=1)
  return (new_x / new_size[..., None]).astype(dtype), new_size


def new_positions(m: Matching, num_tokens: int) -> jax.Array:
  """(B, N) int: where each old token (A and B interleaved) lands after the merge."""
  batch = m.unmerged.shape[0]
  n_a = (num_tokens + 1) // 2
  n_b = num_tokens // 2
  n_kept_a = m.unmerged.shape[1]
  rows = jnp.arange(batch)[:, None]
  pos_a = jnp.zeros((batch, n_a), jnp.int32)
  pos_a = pos_a.at[rows, m.unmerged].set(jnp.arange(n_kept_a, dtype=jnp.int32)[None])
  pos_a = pos_a.at[rows, m.merged].set(n_kept_a + m.dest.astype(jnp.int32))
  pos_b = jnp.broadcast_to(n_kept_a + jnp.arange(n_b, dtype=jnp.int32), (batch, n_b))
  out = jnp.zeros((batch, num_tokens), jnp.int32)
  return out.at[:, ::2].set(pos_a).at[:, 1::2].set(pos_b)


def merge_step(x: jax.Array, metric: jax.Array, state: MergeState, r: int
               ) -> tuple[jax.Array, MergeState]:
  """One ToMe merge: match on `metric`, merge `x`, update sizes and owners.

  x: (B, N, D), metric: (B, N, C). r must be a Python int; r == 0 is the identity.
  """
  if r == 0:
    return x, state
  m = bipartite_matching(metric, r)
  x, size = merge_tokens(x, m, state.size)
  pos = new_positions(m, x.shape[1] + r)
  # owner counts patch tokens only: shift by one for [CLS] on the way in and out.
  owner = jnp.take_along_axis(pos, state.owner + 1, axis=1) - 1
  # the merged-into B token keeps its line: [unmerged A, all B], as merge_tokens orders them
  full = jnp.concatenate([jnp.full_like(state.anchor[:, :1], -1), state.anchor], axis=1)
  anchor = jnp.concatenate([jnp.take_along_axis(full[:, ::2], m.unmerged, axis=1),
                            full[:, 1::2]], axis=1)[:, 1:]
  return x, MergeState(size=size, owner=owner, anchor=anchor)


def attention_bias(size: jax.Array) -> jax.Array:
  """Proportional attention: log(size) added to the logits of each key, (B, 1, 1, N)."""
  return jnp.log(size)[:, None, None, :]


# ----------------------------------------------------------------------------- source


def source_matrix(owner: jax.Array, num_keep: int, dtype=jnp.float32) -> jax.Array:
  """Dense S in {0,1}^{B x K x L} from owner indices (B, L)."""
  return jnp.swapaxes(jax.nn.one_hot(owner, num_keep, dtype=dtype), -1, -2)


def owner_from_source(source: jax.Array) -> jax.Array:
  """Owner indices (B, L) from a dense (or soft) source matrix (B, K, L): argmax over K."""
  return jnp.argmax(source, axis=-2).astype(jnp.int32)


def unmerge(tokens: jax.Array, owner: jax.Array) -> jax.Array:
  """S^T Z_K: copy each of K tokens (B, K, D) to all its positions -> (B, L, D)."""
  return jnp.take_along_axis(tokens, owner[..., None], axis=1)
