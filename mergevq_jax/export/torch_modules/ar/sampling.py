"""Sampling from logits: temperature, top-k, top-p and classifier-free guidance, in
PyTorch (mirror of `mergevq_jax/models/ar/sampling.py`).

temperature <= 0 means greedy (argmax: the same codes as the JAX sampler); top_k <= 0 and
top_p = 1 switch the filters off. Random draws come from a `torch.Generator` and cannot
reproduce JAX's random streams; they follow the same distribution.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

# The value check is pure Python (no JAX), shared with the JAX model.
from mergevq_jax.models.ar.hparams import check_sampling


class SamplingParams(NamedTuple):
  temperature: float = 1.0   # <= 0: greedy
  top_k: int = 0             # <= 0: off (clipped to each head's vocabulary)
  top_p: float = 1.0         # in (0, 1]; 1: off
  cfg_scale: float = 1.0     # >= 0; logits = u + s (c - u) when guidance is on

  @classmethod
  def make(cls, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0) -> "SamplingParams":
    check_sampling(temperature, top_k, top_p, cfg_scale)
    return cls(float(temperature), int(top_k), float(top_p), float(cfg_scale))


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
  """Classifier-free guidance on (2B, V) logits whose first half is conditional:
  u + scale * (c - u), (B, V). Scale 1 gives the conditional logits."""
  cond, uncond = torch.chunk(logits, 2, dim=0)
  return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
  """Set logits outside the top-k and outside the top-p nucleus to -inf: (B, V)."""
  vocab = logits.shape[-1]
  ordered = torch.sort(logits, dim=-1, descending=True).values
  k = min(max(int(top_k), 1), vocab) if top_k > 0 else vocab
  kth = ordered[..., k - 1:k]
  probs = torch.softmax(ordered, dim=-1)
  mass_before = torch.cumsum(probs, dim=-1) - probs
  in_nucleus = mass_before < top_p                    # the most likely token always stays
  nucleus_min = torch.where(in_nucleus, ordered, torch.full_like(ordered, math.inf)).amin(
      dim=-1, keepdim=True)
  keep = (logits >= kth) & (logits >= nucleus_min)
  return torch.where(keep, logits, torch.full_like(logits, -math.inf))


def sample(logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None = None) -> torch.Tensor:
  """(B, V) logits -> (B,) int64 token ids (argmax when temperature <= 0)."""
  logits = logits.float()
  if params.temperature <= 0:
    return torch.argmax(logits, dim=-1)
  x = logits / max(params.temperature, 1e-6)
  if params.top_k > 0 or params.top_p < 1:
    x = filter_logits(x, params.top_k, params.top_p)
  probs = torch.softmax(x, dim=-1)
  return torch.multinomial(probs, 1, generator=generator)[:, 0]
