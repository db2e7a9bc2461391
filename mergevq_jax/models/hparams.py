"""The tokenizer's token geometry and hyperparameter checks, in pure Python.

Stdlib only (no JAX, no torch): the JAX model (`mergevq_jax.models.tokenizer`, which
re-exports these names) and the PyTorch port (`mergevq_jax.export.torch_modules.tokenizer`)
both use them. Configs are read by item access (config["model"]["ch"]), so a config may be
an ml_collections ConfigDict or the plain nested dict of a run's config.json.
"""
from __future__ import annotations

from collections.abc import Mapping

from mergevq_jax.models.merge_schedule import capped_schedule, merge_schedule

GROUPS = 32  # GroupNorm groups of every CNN stage
DTYPES = ("float32", "bfloat16")   # names config["dtype"] may take

_MODEL_KEYS = ("image_size", "encoder_type", "ch", "ch_mult", "num_res_blocks", "num_res_extra",
               "patch_size", "width", "num_layers", "num_heads", "decoder_num_heads",
               "init_values", "z_channels", "num_keep", "keep_candidates",
               "proportional_attention", "align_head", "align_hidden", "align_dim",
               "recovery.enabled", "recovery.width", "recovery.num_heads", "recovery.mlp_dim",
               "recovery.num_cross_layers", "recovery.num_self_layers")
_QUANTIZER_KEYS = ("tau", "entropy_mode", "group_size", "per_token_weight", "batch_weight")


# How the encoder merges on an alignment view of another resolution (L' tokens):
#   'same_r'      the per-block r list of the training resolution's K, capped at half the
#                 tokens per block as ToMe does (the authors' code: G+R keeps 196 - 112 = 84
#                 of 196 tokens at 224 px for K=144 at 256 px);
#   'same_ratio'  a fresh schedule keeping round(K L' / L) tokens (runs saved before
#                 model.align_merge existed were trained this way).
ALIGN_MERGE_RULES = ("same_r", "same_ratio")
ALIGN_MERGE_BEFORE_THE_KEY = "same_ratio"


def align_schedule(model, view_tokens: int, num_keep: int) -> tuple[int, ...]:
  """Per-block merge counts on an alignment view of `view_tokens` patch tokens."""
  rule = model.get("align_merge", ALIGN_MERGE_BEFORE_THE_KEY)
  L = num_tokens(model)
  if rule == "same_r":
    return capped_schedule(merge_schedule(model["num_layers"], L, num_keep), view_tokens)
  if rule == "same_ratio":
    keep = max(1, round(num_keep * view_tokens / L))
    return merge_schedule(model["num_layers"], view_tokens, keep)
  raise ValueError(f"model.align_merge must be one of {ALIGN_MERGE_RULES}, got {rule!r}")


def is_mapping(node) -> bool:
  """Whether `node` is a config node: a dict (Mapping), or a ConfigDict (keys + items)."""
  return isinstance(node, Mapping) or (hasattr(node, "keys") and hasattr(node, "__getitem__"))


def field(config, path: str):
  """config["a"]["b"] for path 'a.b'; ValueError naming the path when it is missing."""
  node = config
  for part in path.split("."):
    if not is_mapping(node) or part not in node:
      raise ValueError(f"config is missing {path!r} (expected the run's config as a nested "
                       f"dict, e.g. json.load of its config.json)")
    node = node[part]
  return node


def downsample_factor(m) -> int:
  """Image side / token-grid side of model config `m`."""
  return 2 ** (len(m["ch_mult"]) - 1) if m["encoder_type"] == "cnn" else m["patch_size"]


def encoder_width(m) -> int:
  """Width of the encoder's transformer tokens (the CNN's last level, or the ViT width)."""
  return m["ch"] * m["ch_mult"][-1] if m["encoder_type"] == "cnn" else m["width"]


def num_tokens(m, image_size: int | None = None) -> int:
  """L, the number of tokens before merging, at `image_size` (default model.image_size)."""
  side = (image_size or m["image_size"]) // downsample_factor(m)
  return side * side


def check_hparams(config) -> None:
  """ValueError naming the first missing or unusable model / quantizer field (or dtype)."""
  for key in _MODEL_KEYS:
    field(config, "model." + key)
  for key in _QUANTIZER_KEYS:
    field(config, "quantizer." + key)
  dtype = field(config, "dtype")
  if dtype not in DTYPES:
    raise ValueError(f"config.dtype must be one of {DTYPES}, got {dtype!r}")
  m = config["model"]
  if m["encoder_type"] not in ("cnn", "vit"):
    raise ValueError(f"model.encoder_type must be 'cnn' or 'vit', got {m['encoder_type']!r}")
  f = downsample_factor(m)
  if m["image_size"] % f:
    raise ValueError(f"model.image_size={m['image_size']} is not divisible by the "
                     f"downsampling factor {f}")
  for key, width, heads in (("num_heads", encoder_width(m), m["num_heads"]),
                            ("decoder_num_heads", m["ch"] * m["ch_mult"][-1],
                             m["decoder_num_heads"])):
    if width % heads:
      raise ValueError(f"model.{key}={heads} does not divide the width {width}")
  bad = [w for w in [m["ch"] * k for k in m["ch_mult"]] + [encoder_width(m)] if w % GROUPS]
  if bad:
    raise ValueError(f"channel widths {bad} (model.ch * ch_mult, encoder width) are not "
                     f"divisible by the {GROUPS} GroupNorm groups")
  L = num_tokens(m)
  for k in (m["num_keep"],) + tuple(m["keep_candidates"]):
    try:
      merge_schedule(m["num_layers"], L, int(k))
    except ValueError as e:
      raise ValueError(f"model.num_keep / keep_candidates: {e}") from None
  if m.get("align_merge", ALIGN_MERGE_BEFORE_THE_KEY) not in ALIGN_MERGE_RULES:
    raise ValueError(f"model.align_merge must be one of {ALIGN_MERGE_RULES}, got "
                     f"{m['align_merge']!r}")
  if m["align_head"] not in ("", "layer3", "layer2_ln"):
    raise ValueError(f"model.align_head must be '', 'layer3' or 'layer2_ln', "
                     f"got {m['align_head']!r}")
  if config["quantizer"]["entropy_mode"] not in ("exact", "bit_groups"):
    raise ValueError(f"quantizer.entropy_mode must be 'exact' or 'bit_groups', "
                     f"got {config['quantizer']['entropy_mode']!r}")
