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


_KINDS = (  # default's type -> (accepted types, one, many)
    (bool, (bool,), "True or False", "booleans"),
    (int, (int,), "an integer", "integers"),
    (float, (int, float), "a number", "numbers"),
    (str, (str,), "a string", "strings"),
)


def _kind(default) -> tuple[tuple[type, ...], str, str]:
  """(accepted types, 'a ...', '...s') for a value whose default is `default`."""
  for t, types, one, many in _KINDS:
    if isinstance(default, t):
      return types, one, many
  return (object,), "any value", "values"


def _fits(value, types) -> bool:
  return isinstance(value, types) and isinstance(value, bool) == (bool in types)


def type_errors(config, reference, prefix: str = "") -> list[str]:
  """'key must be ..., got ...' for every value whose type does not fit its default in
  `reference` (the schema): numbers, strings, booleans, and tuples of them."""
  errors = []
  for key in reference.keys():
    if key not in config:
      continue
    path, value, default = f"{prefix}{key}", config[key], reference[key]
    if isinstance(default, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        errors += type_errors(value, default, path + ".")
      else:
        errors.append(f"{path} must be a section of keys, got {value!r}")
      continue
    if default is None:
      continue
    if isinstance(default, (tuple, list)):
      if not isinstance(value, (tuple, list)):
        errors.append(f"{path} must be a tuple such as {tuple(default)}, got {value!r}")
        continue
      kinds = {_kind(d) for d in default if not isinstance(d, (tuple, list))}
      if len(kinds) == 1:
        types, _, many = kinds.pop()
        if not all(_fits(v, types) for v in value):
          errors.append(f"{path} must be a tuple of {many} such as {tuple(default)}, "
                        f"got {tuple(value)!r}")
      continue
    types, one, _ = _kind(default)
    if not _fits(value, types):
      errors.append(f"{path} must be {one}, got {value!r}")
  return errors


def check_at_least(config, minimum: int, keys: tuple[str, ...]) -> None:
  """ValueError unless each dotted integer key is >= minimum."""
  for key in keys:
    section, name = key.rsplit(".", 1)
    value = config[section][name]
    if value < minimum:
      raise ValueError(f"config key {key} must be >= {minimum}, got {value}")


def validate_common(config, defaults: ml_collections.ConfigDict, schema: str) -> None:
  """Checks every config kind shares: no key outside `defaults` (named by `schema`, e.g.
  'mergevq_jax/config/tokenizer.py:tokenizer_defaults'), value types, stage, platform,
  mesh shape, the training loop's counts (the compute dtype is checked by the model's own
  `check_hparams`)."""
  unknown = unknown_keys(config, defaults)
  if unknown:
    raise ValueError(f"config key(s) {unknown} do not exist; see {schema} for the schema")
  errors = type_errors(config, defaults)
  if errors:
    raise ValueError(f"config key {'; '.join(errors)}")
  if config.stage != defaults.stage:
    raise ValueError(f"config.stage={config.stage!r} but this is a {defaults.stage} config "
                     f"({schema})")
  if config.platform not in PLATFORMS:
    raise ValueError(f"config.platform must be one of {PLATFORMS}, got {config.platform!r}")
  if len(config.sharding.mesh_shape) != 3:
    raise ValueError(f"sharding.mesh_shape needs 3 entries (data, fsdp, tensor), "
                     f"got {config.sharding.mesh_shape}")
  check_at_least(config, 1, ("train.batch_size", "train.steps", "train.log_every",
                             "train.ckpt_every", "train.keep_ckpts", "train.nan_patience"))
