"""The MergeAR attention rule over a raster sequence of codes (spec section 6).

Walk the codes in raster order keeping a set `kept` of at most K_cap codes. Position j
is *kept* when its code is not in `kept` and `kept` has fewer than K_cap codes (the code
is then added); every other position is a *window* position. A query at position i
attends to the prefix, every kept position j <= i and the window positions with
i - W < j <= i.

Because `kept` only grows and never changes once full, position j is kept exactly when
it is the first occurrence of its code and fewer than K_cap first occurrences came
before it; that closed form is what these functions compute (O(L^2) comparisons).
Shapes: codes (B, L) int; masks (B, L, L) bool indexed [query i, key j].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def first_occurrence(codes: jax.Array) -> jax.Array:
  """(B, L) bool: codes[b, j] differs from every codes[b, :j]."""
  L = codes.shape[-1]
  earlier = jnp.tril(jnp.ones((L, L), bool), k=-1)          # [j, m]: m < j
  seen = jnp.any((codes[..., :, None] == codes[..., None, :]) & earlier, axis=-1)
  return ~seen


def kept_positions(codes: jax.Array, keep_cap: int) -> jax.Array:
  """(B, L) bool: positions that enter the kept set (at most keep_cap per row)."""
  first = first_occurrence(codes)
  return first & (jnp.cumsum(first, axis=-1) <= keep_cap)


def overflow_positions(codes: jax.Array, keep_cap: int) -> jax.Array:
  """(B, L) bool: positions whose code is not in the kept set while the set is full (they
  go to the window instead); the cache reports their count per sample."""
  kept = kept_positions(codes, keep_cap)
  L = codes.shape[-1]
  earlier = jnp.tril(jnp.ones((L, L), bool), k=-1)
  in_kept = jnp.any((codes[..., :, None] == codes[..., None, :]) & earlier & kept[..., None, :],
                    axis=-1)
  full_before = (jnp.cumsum(kept, axis=-1) - kept) >= keep_cap
  return ~in_kept & full_before


def merge_mask(codes: jax.Array, window: int, keep_cap: int) -> jax.Array:
  """mask(codes, W, K_cap): (B, L, L) bool over code positions (the prefix is always
  visible and is added by `sequence_mask`)."""
  if window < 1:
    raise ValueError(f"window W must be >= 1, got {window}")
  L = codes.shape[-1]
  i = jnp.arange(L)[:, None]
  j = jnp.arange(L)[None, :]
  kept = kept_positions(codes, keep_cap)[..., None, :]      # (B, 1, L) over keys
  recent = (j > i - window) & (j <= i)
  return ((kept & (j <= i)) | recent)


def causal_mask(batch: int, length: int) -> jax.Array:
  """(B, L, L) plain causal mask (the LlamaGen baseline)."""
  return jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))


def sequence_mask(code_mask: jax.Array, prefix: int) -> jax.Array:
  """Mask over the model's input sequence [prefix tokens, codes]: (B, P+n, P+n).

  code_mask (B, n, n) over code positions. Prefix tokens attend causally among
  themselves; every code position also sees the whole prefix.
  """
  b, n, _ = code_mask.shape
  top = jnp.broadcast_to(jnp.tril(jnp.ones((prefix, prefix), bool)), (b, prefix, prefix))
  top = jnp.concatenate([top, jnp.zeros((b, prefix, n), bool)], axis=-1)
  bottom = jnp.concatenate([jnp.ones((b, n, prefix), bool), code_mask], axis=-1)
  return jnp.concatenate([top, bottom], axis=1)


def attention_mask(codes: jax.Array, kind: str, window: int, keep_cap: int | None = None
                   ) -> jax.Array:
  """Code-position mask for `kind` 'merge' (keep_cap defaults to L: no overflow, the
  training mask) or 'causal'."""
  L = codes.shape[-1]
  if kind == "causal":
    return causal_mask(codes.shape[0], L)
  if kind == "merge":
    return merge_mask(codes, window, L if keep_cap is None else keep_cap)
  raise ValueError(f"attention kind must be 'merge' or 'causal', got {kind!r}")
