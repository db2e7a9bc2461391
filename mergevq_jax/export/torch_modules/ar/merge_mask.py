"""The MergeAR attention rule over a raster sequence of codes, in PyTorch (mirror of
`mergevq_jax/models/ar/merge_mask.py`; spec section 6).

Walk the codes in raster order keeping a set `kept` of at most K_cap codes. Position j is
*kept* when its code is not in `kept` and `kept` has fewer than K_cap codes (the code is
then added); every other position is a *window* position. A query at position i attends
to the prefix, every kept position j <= i and the window positions with i - W < j <= i.
Position j is kept exactly when it is the first occurrence of its code and fewer than
K_cap first occurrences came before it (the closed form computed here).
Shapes: codes (B, L) int; masks (B, L, L) bool indexed [query i, key j].
"""
from __future__ import annotations

import torch


def _earlier(length: int, device) -> torch.Tensor:
  """(L, L) bool [j, m]: m < j."""
  return torch.tril(torch.ones((length, length), dtype=torch.bool, device=device), diagonal=-1)


def first_occurrence(codes: torch.Tensor) -> torch.Tensor:
  """(B, L) bool: codes[b, j] differs from every codes[b, :j]."""
  same = codes[..., :, None] == codes[..., None, :]
  return ~torch.any(same & _earlier(codes.shape[-1], codes.device), dim=-1)


def kept_positions(codes: torch.Tensor, keep_cap: int) -> torch.Tensor:
  """(B, L) bool: positions that enter the kept set (at most keep_cap per row)."""
  first = first_occurrence(codes)
  return first & (torch.cumsum(first.long(), dim=-1) <= keep_cap)


def overflow_positions(codes: torch.Tensor, keep_cap: int) -> torch.Tensor:
  """(B, L) bool: positions whose code is not in the kept set while the set is full (they
  go to the window instead); the cache reports their count per sample."""
  kept = kept_positions(codes, keep_cap)
  same = codes[..., :, None] == codes[..., None, :]
  in_kept = torch.any(same & _earlier(codes.shape[-1], codes.device) & kept[..., None, :],
                      dim=-1)
  full_before = (torch.cumsum(kept.long(), dim=-1) - kept.long()) >= keep_cap
  return ~in_kept & full_before


def merge_mask(codes: torch.Tensor, window: int, keep_cap: int) -> torch.Tensor:
  """mask(codes, W, K_cap): (B, L, L) bool over code positions (the prefix is always
  visible and is added by `sequence_mask`)."""
  if window < 1:
    raise ValueError(f"window W must be >= 1, got {window}")
  L = codes.shape[-1]
  i = torch.arange(L, device=codes.device)[:, None]
  j = torch.arange(L, device=codes.device)[None, :]
  kept = kept_positions(codes, keep_cap)[..., None, :]      # (B, 1, L) over keys
  recent = (j > i - window) & (j <= i)
  return (kept & (j <= i)) | recent


def causal_mask(batch: int, length: int, device=None) -> torch.Tensor:
  """(B, L, L) plain causal mask (the LlamaGen baseline)."""
  tril = torch.tril(torch.ones((length, length), dtype=torch.bool, device=device))
  return tril.expand(batch, length, length)


def sequence_mask(code_mask: torch.Tensor, prefix: int) -> torch.Tensor:
  """Mask over the model's input sequence [prefix tokens, codes]: (B, P+n, P+n) from
  code_mask (B, n, n). Prefix tokens attend causally among themselves; every code
  position also sees the whole prefix."""
  b, n, _ = code_mask.shape
  dev = code_mask.device
  top = torch.tril(torch.ones((prefix, prefix), dtype=torch.bool, device=dev)).expand(
      b, prefix, prefix)
  top = torch.cat([top, torch.zeros((b, prefix, n), dtype=torch.bool, device=dev)], dim=-1)
  bottom = torch.cat([torch.ones((b, n, prefix), dtype=torch.bool, device=dev),
                      code_mask.bool()], dim=-1)
  return torch.cat([top, bottom], dim=1)


def attention_mask(codes: torch.Tensor, kind: str, window: int, keep_cap: int | None = None
                   ) -> torch.Tensor:
  """Code-position mask for `kind` 'merge' (keep_cap defaults to L: no overflow, the
  training mask) or 'causal'."""
  L = codes.shape[-1]
  if kind == "causal":
    return causal_mask(codes.shape[0], L, codes.device)
  if kind == "merge":
    return merge_mask(codes, window, L if keep_cap is None else keep_cap)
  raise ValueError(f"attention kind must be 'merge' or 'causal', got {kind!r}")
