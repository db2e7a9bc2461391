"""Print a config's parameter counts and geometry as one JSON object: a tokenizer's (with
GFLOPs) or a MergeAR's (with its KV-cache sizes).

  python -m mergevq_jax.info --config=configs/tokenizer_gr.py[:gpu] [--config.model.num_keep=196]

Parameters are counted on an abstract model (nnx.eval_shape: no memory, no compute).
GFLOPs per image come from XLA's cost analysis of the lowered encoder and decoder at
batch 1 (no compilation); `--noflops` skips them. XLA counts a multiply-add as 2 FLOPs;
the paper's Table A1 numbers (fvcore) count it as 1, so `*_gmacs` = FLOPs / 2 is the
column to compare with the paper.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from mergevq_jax import cli
from mergevq_jax.models import layers
from mergevq_jax.models.tokenizer import Tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Tokenizer config file.",
                                          lock_config=False)
_FLOPS = flags.DEFINE_bool("flops", True, "Report GFLOPs from XLA cost analysis.")


def _flops(fn, *args) -> float | None:
  try:
    cost = jax.jit(fn).lower(*args).cost_analysis()
  except Exception:  # cost analysis is best effort; some backends do not provide it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])


def tokenizer_info(config, with_flops: bool = True) -> dict:
  model = nnx.eval_shape(lambda: Tokenizer(config, rngs=nnx.Rngs(0)))
  m = config.model
  counts = {f"{name}_params": layers.count_params(getattr(model, name))
            if getattr(model, name) is not None else 0
            for name in ("encoder", "decoder", "align_head", "recovery")}
  info = {
      "variant": m.variant,
      "image_size": m.image_size,
      "num_tokens": model.num_tokens,
      "num_keep": m.num_keep,
      "merge_schedule": list(model.schedule(m.num_keep)),
      "encoder_params": counts["encoder_params"],
      "decoder_params": counts["decoder_params"],
      "quantizer_params": 0,  # LFQ has no codebook: codes are sign patterns
      "recovery_params": counts["recovery_params"],
      "align_head_params": counts["align_head_params"],
      "total_params": sum(counts.values()),
  }
  if with_flops:
    graphdef, state = nnx.split(model)
    image = jax.ShapeDtypeStruct((1, m.image_size, m.image_size, 3), jnp.float32)
    K = m.num_keep
    enc = _flops(lambda s, x: nnx.merge(graphdef, s).encode(x, K).tokens, state, image)
    tokens = jax.ShapeDtypeStruct((1, K, m.z_channels), jnp.float32)
    owner = jax.ShapeDtypeStruct((1, model.num_tokens), jnp.int32)
    dec = _flops(lambda s, t, o: nnx.merge(graphdef, s).decode(t, o), state, tokens, owner)
    for name, flops in (("encoder", enc), ("decoder", dec)):
      info[f"{name}_gflops"] = None if flops is None else round(flops / 1e9, 2)
      info[f"{name}_gmacs"] = None if flops is None else round(flops / 2e9, 2)
  return info


def mergear_info(config) -> dict:
  """Parameter counts of a MergeAR config and its KV-cache sizes (slots per sample)."""
  from mergevq_jax.models.ar.kv_cache import CacheLayout
  from mergevq_jax.models.ar.mergear import PREFIX, MergeAR
  model = nnx.eval_shape(lambda: MergeAR(config, rngs=nnx.Rngs(0)))
  m = config.model
  params = nnx.state(model, nnx.Param)
  body = layers.count_params(params["layers"])
  L = model.num_positions
  full = CacheLayout.make(PREFIX, L, "causal").num_slots
  pruned = {int(k): CacheLayout.make(PREFIX, L, "merge", int(k), m.window).num_slots
            for k in m.keep_values}
  info = {
      "variant": m.variant, "num_layers": m.num_layers, "width": m.width,
      "num_heads": m.num_heads, "ffn_dim": m.ffn_dim, "num_positions": L,
      "sub_code_bits": list(m.sub_code_bits), "keep_values": list(m.keep_values),
      "window": m.window, "body_params": body,
      "total_params": layers.count_params(params),
      "cache_slots_full": full,
      "cache_slots_pruned": pruned,
  }
  no_saving = sorted(k for k, n in pruned.items() if n >= full)
  if no_saving:  # K kept slots + W window slots + prefix >= L + prefix
    info["cache_note"] = (f"K={no_saving}: the pruned cache (K kept + {m.window} window "
                          f"slots) is not smaller than the full one ({full} slots): it "
                          f"saves no memory at these K")
  return info


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  from mergevq_jax import config as config_lib
  config = _CONFIG.value
  config_lib.validate(config)
  if config_lib.stage_of(config) == "mergear":
    print(json.dumps(mergear_info(config)))
  else:
    print(json.dumps(tokenizer_info(config, _FLOPS.value)))


if __name__ == "__main__":
  cli.run(main)
