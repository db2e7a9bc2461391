"""ToMe merge schedule: how many tokens each encoder block merges, in pure Python.

Stdlib only (no JAX, no torch): imported by the JAX model (`mergevq_jax.models.tome`, which
re-exports both functions), by the PyTorch port (`mergevq_jax.export.torch_modules`) and by
the authors' layout checks (`mergevq_jax.export.authors`).
"""
from __future__ import annotations

import math
from typing import Sequence


def merge_schedule(num_layers: int, num_tokens: int, num_keep: int) -> tuple[int, ...]:
  """Per-block merge counts r_l, linearly decreasing from ~1.5 r to ~0.5 r.

  With r = ceil((L - K) / n), start = int(1.5 r) and stop = 2 r - start, block l merges
  int(start + l (stop - start) / (n - 1)) tokens (the reference code's `parse_r` with
  inflection -0.5); the rounding remainder goes to the first block so that
  sum(r_l) == L - K. Example: L=256, K=144 ->
  (12, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 5).

  Raises ValueError if K is outside [1, L] or the schedule would merge more than half
  of the mergeable tokens in some block.
  """
  if not isinstance(num_keep, int) or isinstance(num_keep, bool):
    raise ValueError(f"num_keep must be a Python int (static under jit), got {num_keep!r}")
  if not 1 <= num_keep <= num_tokens:
    raise ValueError(f"num_keep={num_keep} must lie in [1, L={num_tokens}]")
  total = num_tokens - num_keep
  if total == 0:
    return (0,) * num_layers
  r = math.ceil(total / num_layers)
  if num_layers == 1:
    schedule = [total]
  else:
    start = int(r * 1.5)
    stop = 2 * r - start
    step = (stop - start) / (num_layers - 1)
    schedule = [int(start + step * i) for i in range(num_layers)]
    schedule[0] += total - sum(schedule)
    if schedule[0] < 0:  # K close to L: the linear rule overshoots; spread evenly instead
      schedule = [total // num_layers + (i < total % num_layers) for i in range(num_layers)]
  check_schedule(schedule, num_tokens)
  return tuple(schedule)


def capped_schedule(schedule: Sequence[int], num_tokens: int) -> tuple[int, ...]:
  """`schedule` run on `num_tokens` patch tokens with ToMe's cap of half the tokens left
  per block (what bipartite matching does when the list was made for more tokens)."""
  left, out = num_tokens, []
  for r in schedule:
    r = max(0, min(int(r), left // 2))
    out.append(r)
    left -= r
  return tuple(out)


def check_schedule(schedule: Sequence[int], num_tokens: int) -> None:
  """ValueError unless every r_l is in [0, half of the patch tokens left at block l]."""
  left = num_tokens
  for layer, r in enumerate(schedule):
    if r < 0 or r > left // 2:
      raise ValueError(
          f"merge schedule {list(schedule)} is not reachable: block {layer} would merge "
          f"{r} of {left} tokens (at most 50%, i.e. {left // 2}, per block); "
          f"choose a larger num_keep")
    left -= r
