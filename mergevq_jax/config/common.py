"""What every config kind shares: platform presets, config-file loading, the unknown-key
check and the checks of platform, dtype and mesh shape.

A config is an `ml_collections.ConfigDict` whose `stage` key names its kind ('tokenizer'
or 'mergear', see `mergevq_jax.config`); each kind's schema (every key the code reads,
with its default) is a function in `config/<stage>.py`.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

# What each platform preset sets: compute dtype, attention implementation, mesh. The
# platform also selects the ops' implementation (`mergevq_jax.ops`: XLA:CPU kernels
# with hand-written gradients on 'cpu', XLA's own ops elsewhere).
PLATFORM_PRESETS = {
    "cpu": dict(dtype="float32", attention_impl="xla", mesh_shape=(-1, 1, 1)),
    "gpu": dict(dtype="bfloat16", attention_impl="cudnn", mesh_shape=(-1, 1, 1)),
    "tpu": dict(dtype="bfloat16", attention_impl="xla", mesh_shape=(1, -1, 1)),
}
PLATFORMS = tuple(PLATFORM_PRESETS)


def apply_platform(config: ml_collections.ConfigDict, platform: str | None
                   ) -> ml_collections.ConfigDict:
  """Set the platform preset (`--config=configs/x.py:gpu`); None or '' keeps the config.
  Configs without model.attention_impl (MergeAR) take the dtype and mesh only."""
  if not platform:
    return config
  if platform not in PLATFORM_PRESETS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  preset = PLATFORM_PRESETS[platform]
  config.platform = platform
  config.dtype = preset["dtype"]
  if "attention_impl" in config.model:
    config.model.attention_impl = preset["attention_impl"]
  config.sharding.mesh_shape = preset["mesh_shape"]
  return config


def load_config_file(path: str, platform: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(platform)` of a config file given by path (configs/*.py)."""
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} not found")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(platform)


def unknown_keys(config, reference, prefix: str = "") -> list[str]:
  """Dotted paths of keys in `config` that `reference` (the schema) does not have."""
  unknown = []
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      unknown.append(path)
    elif isinstance(config[key], ml_collections.ConfigDict):
      if isinstance(reference[key], ml_collections.ConfigDict):
        unknown += unknown_keys(config[key], reference[key], path + ".")
  return unknown


def validate_common(config, defaults: ml_collections.ConfigDict, schema: str) -> None:
  """Checks every config kind shares: no key outside `defaults` (named by `schema`, e.g.
  'mergevq_jax/config/tokenizer.py:tokenizer_defaults'), stage, platform, mesh shape (the
  compute dtype is checked by the model's own `check_hparams`)."""
  unknown = unknown_keys(config, defaults)
  if unknown:
    raise ValueError(f"config key(s) {unknown} do not exist; see {schema} for the schema")
  if config.stage != defaults.stage:
    raise ValueError(f"config.stage={config.stage!r} but this is a {defaults.stage} config "
                     f"({schema})")
  if config.platform not in PLATFORMS:
    raise ValueError(f"config.platform must be one of {PLATFORMS}, got {config.platform!r}")
  if len(config.sharding.mesh_shape) != 3:
    raise ValueError(f"sharding.mesh_shape needs 3 entries (data, fsdp, tensor), "
                     f"got {config.sharding.mesh_shape}")
