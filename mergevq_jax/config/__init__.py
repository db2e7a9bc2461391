"""Experiment configs: one schema per stage, chosen by the config's `stage` key.

  tokenizer  `config/tokenizer.py:tokenizer_defaults`  (stage 1, configs/tokenizer_*.py)
  mergear    `config/mergear.py:mergear_defaults`      (stage 2, configs/mergear_*.py)

`validate(config)` checks any config against its stage's schema; `stage_of(config)` is
its stage, or a ValueError listing the known ones.
"""
from __future__ import annotations

from mergevq_jax.config.common import (PLATFORMS, apply_platform, load_config_file,
                                       unknown_keys)
from mergevq_jax.config import mergear, tokenizer
from mergevq_jax.config.mergear import mergear_defaults, validate_mergear_config
from mergevq_jax.config.tokenizer import (keep_candidates, keep_probs, tokenizer_defaults,
                                          validate_config)

# stage -> (schema: () -> ConfigDict, validation: config -> None, where the schema is)
STAGES = {
    "tokenizer": (tokenizer_defaults, validate_config, tokenizer.SCHEMA),
    "mergear": (mergear_defaults, validate_mergear_config, mergear.SCHEMA),
}


def stage_of(config) -> str:
  """The config's stage; ValueError naming the known stages when it is missing or unknown."""
  stage = config.get("stage", None)
  if stage not in STAGES:
    raise ValueError(f"config.stage={stage!r} is not a known stage; known stages: "
                     f"{sorted(STAGES)}")
  return stage


def validate(config) -> None:
  """ValueError naming the first problem of a config of any stage."""
  STAGES[stage_of(config)][1](config)


__all__ = ["PLATFORMS", "STAGES", "apply_platform", "keep_candidates",
           "keep_probs", "load_config_file", "mergear_defaults", "stage_of",
           "tokenizer_defaults", "unknown_keys", "validate", "validate_config",
           "validate_mergear_config"]
