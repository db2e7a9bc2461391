"""Token merging (ToMe bipartite soft matching) with size and source tracking, in PyTorch:
the twin of `mergevq_jax.models.tome` (pure functions, no module state).

Token axis layout: index 0 is the [CLS] token (never merged), 1..N-1 are patch tokens or
merged groups of them. The source matrix S in {0,1}^{K x L} is carried as its column
index: `owner[b, l]` (int64) is the kept patch token (row of S, [CLS] excluded) that
original position l was merged into; `source_matrix(owner, K)` is the dense S and
`unmerge(tokens, owner)` is S^T Z_K as a gather.

Ties are broken as in JAX: the first maximum for argmax, a stable sort for the merge order.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

# The merge schedule is pure Python, shared with the JAX model; re-exported here.
from mergevq_jax.models.merge_schedule import check_schedule, merge_schedule  # noqa: F401


class MergeState(NamedTuple):
  """size: (B, N) float32 positions per token ([CLS] has size 1); owner: (B, L) int64."""
  size: torch.Tensor
  owner: torch.Tensor


def init_merge_state(batch: int, num_patches: int, device=None) -> MergeState:
  """Identity state for a sequence of [CLS] + `num_patches` tokens."""
  size = torch.ones(batch, num_patches + 1, device=device)
  owner = torch.arange(num_patches, device=device).expand(batch, num_patches)
  return MergeState(size=size, owner=owner)


# ----------------------------------------------------------------------------- matching


class Matching(NamedTuple):
  """unmerged (B, N_a - r): A-indices that stay, ascending; merged (B, r): A-indices merged
  away; dest (B, r): the B-index each merged A token goes into. All int64."""
  unmerged: torch.Tensor
  merged: torch.Tensor
  dest: torch.Tensor


def bipartite_matching(metric: torch.Tensor, r: int) -> Matching:
  """metric (B, N, C), token 0 = [CLS]. A = even, B = odd indices; each A token picks its
  most cosine-similar B token; the r A tokens with the highest scores merge."""
  metric = metric.float()
  metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
  a, b = metric[:, ::2], metric[:, 1::2]
  scores = torch.einsum("bic,bjc->bij", a, b)
  is_cls = torch.arange(scores.shape[1], device=scores.device)[None, :, None] == 0
  scores = scores.masked_fill(is_cls, -math.inf)   # protect [CLS]
  best = scores.amax(dim=-1)
  best_idx = scores.argmax(dim=-1)
  order = torch.argsort(-best, dim=-1, stable=True)
  merged = order[:, :r]
  unmerged = torch.sort(order[:, r:], dim=-1).values
  return Matching(unmerged=unmerged, merged=merged, dest=best_idx.gather(1, merged))


def _rows(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
  """v[b, idx[b, i]] for v (B, N) or (B, N, D)."""
  if v.ndim == 3:
    idx = idx[..., None].expand(-1, -1, v.shape[-1])
  return v.gather(1, idx)


def _scatter_sum(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
  """dst[b, idx[b, i]] += src[b, i] (out of place) for (B, Nb, ...) dst, (B, r, ...) src."""
  if dst.ndim == 3:
    idx = idx[..., None].expand(-1, -1, dst.shape[-1])
  return dst.scatter_add(1, idx, src)


def merge_tokens(x: torch.Tensor, m: Matching, size: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
  """Size-weighted average merge of x (B, N, D) with sizes (B, N): (x', size') with N - r
  tokens in the order [unmerged A tokens, all B tokens]."""
  xs = x.float() * size[..., None]
  xa, xb = xs[:, ::2], xs[:, 1::2]
  sa, sb = size[:, ::2], size[:, 1::2]
  xb = _scatter_sum(xb, m.dest, _rows(xa, m.merged))
  sb = _scatter_sum(sb, m.dest, _rows(sa, m.merged))
  new_x = torch.cat([_rows(xa, m.unmerged), xb], dim=1)
  new_size = torch.cat([_rows(sa, m.unmerged), sb], dim=1)
  return new_x / new_size[..., None], new_size


def new_positions(m: Matching, num_tokens: int) -> torch.Tensor:
  """(B, N) int64: where each old token (A and B interleaved) lands after the merge."""
  batch, n_kept_a = m.unmerged.shape
  device = m.unmerged.device
  n_a, n_b = (num_tokens + 1) // 2, num_tokens // 2
  pos_a = torch.zeros(batch, n_a, dtype=torch.long, device=device)
  pos_a.scatter_(1, m.unmerged, torch.arange(n_kept_a, device=device).expand(batch, -1))
  pos_a.scatter_(1, m.merged, n_kept_a + m.dest)
  out = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
  out[:, ::2] = pos_a
  out[:, 1::2] = n_kept_a + torch.arange(n_b, device=device)
  return out


def merge_step(x: torch.Tensor, metric: torch.Tensor, state: MergeState, r: int
               ) -> tuple[torch.Tensor, MergeState]:
  """One ToMe merge of r tokens (r == 0: identity): x (B, N, D), metric (B, N, C)."""
  if r == 0:
    return x, state
  m = bipartite_matching(metric, r)
  x, size = merge_tokens(x, m, state.size)
  pos = new_positions(m, x.shape[1] + r)
  # owner counts patch tokens only: shift by one for [CLS] on the way in and out.
  owner = pos.gather(1, state.owner + 1) - 1
  return x, MergeState(size=size, owner=owner)


def attention_bias(size: torch.Tensor) -> torch.Tensor:
  """Proportional attention: log(size) added to the logits of each key, (B, 1, 1, N)."""
  return torch.log(size)[:, None, None, :]


# ----------------------------------------------------------------------------- source


def source_matrix(owner: torch.Tensor, num_keep: int, dtype=torch.float32) -> torch.Tensor:
  """Dense S in {0,1}^{B x K x L} from owner indices (B, L)."""
  return torch.nn.functional.one_hot(owner.long(), num_keep).to(dtype).transpose(-1, -2)


def owner_from_source(source: torch.Tensor) -> torch.Tensor:
  """Owner indices (B, L) int64 from a dense (or soft) source matrix (B, K, L): argmax over K."""
  return source.argmax(dim=-2)


def unmerge(tokens: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
  """S^T Z_K: copy each of K tokens (B, K, D) to all its positions -> (B, L, D)."""
  return tokens.gather(1, owner.long()[..., None].expand(-1, -1, tokens.shape[-1]))
