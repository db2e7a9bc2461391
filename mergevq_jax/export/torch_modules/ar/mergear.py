"""MergeAR in PyTorch: LlamaGen-style decoder-only transformer over raster code sequences
(mirror of `mergevq_jax/models/ar/mergear.py`, same parameter names and shapes).

Input sequence: [class token, merge-instruction token M_K, c_0, ..., c_{L-2}]; the output
at M_K predicts c_0 and the output at c_i predicts c_{i+1}. Pre-norm blocks with RMSNorm,
multi-head attention with 2D RoPE over the code grid (prefix tokens are not rotated),
SwiGLU FFN, no biases. The vocabulary is factorised into sub-codes (most significant bits
first): the input embedding sums one embedding per sub-code, and head k predicts sub-code
k from the final hidden state plus embeddings of the sub-codes before it.

Parameters = the NNX tree of the JAX model, unchanged (`mergevq_jax.export.native`):
class_embed (C+1, D), keep_embed (nK, D), code_embed.k (2^b_k, D), head_cond_embed.k
(2^b_k, D) for all heads but the last, layers.{attn_norm (n, D), wqkv (n, D, 3, H, Dh),
wo (n, H, Dh, D), ffn_norm (n, D), w13 (n, D, 2, F), w2 (n, F, D)} stacked over the n
layers, final_norm (D,), heads.k (D, 2^b_k). `load_state_dict(strict=True)` of a native
file needs no renaming.

Computes in float32 whatever config['dtype'] says ('bfloat16' is accepted and ignored).
Shapes: codes (B, L) int in [0, 2^bits); class ids (B,) int, the null class (for
classifier-free guidance) is num_classes; keep index (B,) int into keep_values.
"""
from __future__ import annotations

import torch
from torch import nn

# Config checks and merge instructions are pure Python (no JAX), shared with the JAX model.
from mergevq_jax.models.ar import hparams
from mergevq_jax.models.ar.hparams import PREFIX, check_hparams

from ..hub import FromPretrained, own_config
from .blocks import LayerParams, block_forward, rms_norm, rope_angles, split_codes
from .merge_mask import attention_mask, sequence_mask


def _normal(shape, std: float) -> nn.Parameter:
  return nn.Parameter(torch.randn(*shape) * std)


class MergeAR(FromPretrained, nn.Module):
  """MergeAR(config): `forward` = teacher-forced logits, `generate` = the cached sampler."""

  stage = "mergear"

  def __init__(self, config: dict):
    super().__init__()
    self.config = own_config(config, check_hparams)
    m = self.config["model"]
    D, H, F, n = int(m["width"]), int(m["num_heads"]), int(m["ffn_dim"]), int(m["num_layers"])
    Dh = D // H
    self.sub_code_bits = tuple(int(b) for b in m["sub_code_bits"])
    self.num_classes = int(m["num_classes"])
    self.grid = (int(m["grid"][0]), int(m["grid"][1]))
    self.eps = float(m["norm_eps"])
    self.window = int(m["window"])
    self.attention = str(m["attention"])
    std = float(m["init_std"])
    bits = self.sub_code_bits
    self.class_embed = _normal((self.num_classes + 1, D), std)
    self.keep_embed = _normal((len(m["keep_values"]), D), std)
    self.code_embed = nn.ParameterList([_normal((2 ** b, D), std) for b in bits])
    # Head k >= 1 sees the final hidden state + embeddings of sub-codes 0..k-1.
    self.head_cond_embed = nn.ParameterList([_normal((2 ** b, D), std) for b in bits[:-1]])
    self.layers = nn.ParameterDict(dict(
        attn_norm=nn.Parameter(torch.ones(n, D)),
        wqkv=_normal((n, D, 3, H, Dh), std),
        wo=_normal((n, H, Dh, D), std),
        ffn_norm=nn.Parameter(torch.ones(n, D)),
        w13=_normal((n, D, 2, F), std),
        w2=_normal((n, F, D), std)))
    self.final_norm = nn.Parameter(torch.ones(D))
    self.heads = nn.ParameterList([nn.Parameter(torch.zeros(D, 2 ** b)) for b in bits])
    self.register_buffer("rope", rope_angles(self.grid, Dh, float(m["rope_base"])),
                         persistent=False)    # (L, Dh/2)

  # ------------------------------------------------------------------ geometry
  @property
  def num_positions(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def num_layers(self) -> int:
    return self.layers["wqkv"].shape[0]

  @property
  def num_heads(self) -> int:
    return self.layers["wqkv"].shape[3]

  @property
  def head_dim(self) -> int:
    return self.layers["wqkv"].shape[4]

  @property
  def keep_values(self) -> tuple[int, ...]:
    return tuple(int(k) for k in self.config["model"]["keep_values"])

  @property
  def device(self) -> torch.device:
    return self.final_norm.device

  def keep_index(self, num_keep: int) -> int:
    """Index of merge instruction K; ValueError if the model was not trained with it."""
    return hparams.keep_index(self.keep_values, num_keep)

  def layer_params(self) -> LayerParams:
    """All blocks' parameters, stacked on a leading layers axis."""
    return LayerParams(**{k: v for k, v in self.layers.items()})

  def code_angles(self) -> torch.Tensor:
    """(L, Dh/2) RoPE angles of the raster code positions."""
    return self.rope

  def input_angles(self, num_codes: int) -> torch.Tensor:
    """(1, P + num_codes, Dh/2): zero angles (no rotation) for the prefix."""
    ang = self.rope[:num_codes]
    return torch.cat([ang.new_zeros(PREFIX, ang.shape[-1]), ang])[None]

  def attention_mask(self, codes: torch.Tensor, kind: str | None = None,
                     window: int | None = None, keep_cap: int | None = None) -> torch.Tensor:
    """(B, L, L) code-position mask of `kind` (default: the trained one, model.attention)
    with window W (default model.window) and K_cap (default L: the training mask)."""
    return attention_mask(codes, kind or self.attention,
                          self.window if window is None else window, keep_cap)

  # ------------------------------------------------------------------ pieces
  def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
    """(B, T) codes -> (B, T, D): sum of the sub-code embeddings."""
    subs = split_codes(codes, self.sub_code_bits)
    return sum(table[s] for table, s in zip(self.code_embed, subs))

  def embed_prefix(self, class_ids: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
    """(B,) class ids, (B,) keep indices -> (B, 2, D)."""
    return torch.stack([self.class_embed[class_ids.long()],
                        self.keep_embed[keep_index.long()]], dim=1)

  def run_layers(self, x: torch.Tensor, angles: torch.Tensor, visible: torch.Tensor
                 ) -> torch.Tensor:
    """All blocks over a whole sequence, then the final norm: (B, T, D) -> (B, T, D);
    angles (1, T, Dh/2), visible (B, T, T) bool."""
    stacked = self.layer_params()
    for i in range(self.num_layers):
      x = block_forward(stacked.layer(i), x, angles, visible, self.eps)
    return self.final(x)

  def final(self, x: torch.Tensor) -> torch.Tensor:
    return rms_norm(x, self.final_norm, self.eps)

  def head_logits(self, h: torch.Tensor, k: int, previous: list[torch.Tensor]
                  ) -> torch.Tensor:
    """Logits of sub-code k (..., 2^bits_k) from h (..., D); `previous` are sub-codes
    0..k-1 (...,)."""
    for table, s in zip(self.head_cond_embed, previous):
      h = h + table[s.long()]
    return h @ self.heads[k]

  def teacher_logits(self, h: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
    """Per-head logits with each head conditioned on the true earlier sub-codes."""
    subs = split_codes(codes, self.sub_code_bits)
    return [self.head_logits(h, k, subs[:k]) for k in range(len(subs))]

  # ------------------------------------------------------------------ training forward
  def forward(self, codes: torch.Tensor, class_ids: torch.Tensor, keep_index: torch.Tensor,
              code_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Teacher-forced logits for every code position, as the JAX model's __call__.

    codes (B, L) int; class_ids (B,); keep_index (B,) into keep_values; code_mask (B, L, L)
    bool over code positions (`merge_mask` / `causal_mask`; None: the training mask,
    `attention_mask(codes)`). Returns one (B, L, 2^bits_k) float32 tensor per sub-code.
    """
    codes = codes.long()
    if code_mask is None:
      code_mask = self.attention_mask(codes)
    L = codes.shape[1]
    x = torch.cat([self.embed_prefix(class_ids, keep_index), self.embed_codes(codes[:, :-1])],
                  dim=1)
    visible = sequence_mask(code_mask[:, :L - 1, :L - 1], PREFIX)
    h = self.run_layers(x, self.input_angles(L - 1), visible)
    return self.teacher_logits(h[:, PREFIX - 1:], codes)

  # ------------------------------------------------------------------ cached decoding
  def cache_layout(self, keep_cap: int, mode: str | None = None, window: int | None = None):
    """The KV-cache layout: mode 'merge' (pruned: P + K_cap + W slots; default as trained)
    or 'causal' (full: P + L slots)."""
    from .kv_cache import CacheLayout
    return CacheLayout.make(PREFIX, self.num_positions, mode or self.attention, keep_cap,
                            self.window if window is None else window)

  @torch.no_grad()
  def teacher_forced_logits(self, codes, class_ids, keep_index, *, keep_cap: int | None = None,
                            mode: str | None = None, window: int | None = None):
    """The cached decoder fed `codes` (B, L): (one (B, L, 2^bits_k) tensor per sub-code,
    DecodeStats), equal to `forward` under merge_mask(codes, W, K_cap) ('merge', K_cap
    default L) or the causal mask ('causal')."""
    from . import decode
    layout = self.cache_layout(self.num_positions if keep_cap is None else keep_cap, mode,
                               window)
    dev = self.device
    return decode.teacher_forced_logits(
        self, layout, torch.as_tensor(codes, device=dev).long(),
        torch.as_tensor(class_ids, device=dev).long(),
        torch.as_tensor(keep_index, device=dev).long())

  @torch.no_grad()
  def generate(self, class_ids, num_keep: int, *, keep_cap: int | None = None,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               cfg_scale: float = 1.0, guidance: bool | None = None, mode: str | None = None,
               window: int | None = None, generator: torch.Generator | None = None,
               seed: int | None = None):
    """Sample codes (B, L) int64 for class ids (B,) under merge instruction K=num_keep,
    with the fixed-shape cache of `cache_layout` (K_cap default K). Returns (codes,
    DecodeStats(kept_slots_used (B,), overflow (B,))), as the JAX `Generator` does.

    temperature 0 = greedy (the JAX sampler's codes); top_k 0 / top_p 1 = off; guidance
    (null-class rows in the same batch) defaults to cfg_scale != 1. Randomness comes from
    `generator`, else a generator seeded with `seed`, else torch's global generator.
    """
    from . import decode
    ids, keep_cap = decode.check_request(self, class_ids, num_keep, keep_cap)
    params = decode.SamplingParams.make(temperature, top_k, top_p, cfg_scale)
    guidance = bool(cfg_scale != 1.0) if guidance is None else bool(guidance)
    layout = self.cache_layout(keep_cap, mode, window)
    if generator is None and seed is not None:
      generator = torch.Generator(device=self.device).manual_seed(int(seed))
    keep_index = torch.full(ids.shape, self.keep_index(num_keep), dtype=torch.long,
                            device=self.device)
    return decode.generate(self, layout, ids, keep_index, params, guidance, generator)
