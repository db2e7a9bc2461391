"""Train a MergeVQ tokenizer (stage 1).

  python -m mergevq_jax.main --config=configs/demo_cpu.py --workdir=/tmp/demo
  python -m mergevq_jax.main --config=configs/tokenizer_gr.py:tpu --workdir=gs://... \
      --config.data.source=tfds --config.data.path=/data/tfds

Resumes from the latest checkpoint in --workdir. Writes checkpoints/, metrics.jsonl,
tensorboard/, reconstructions.png and summary.json there.
"""
from __future__ import annotations

import json
import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from mergevq_jax import cli, host_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, images).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods / GPU "
    "clusters; the launch scripts set this).")


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ValueError("--config=configs/<name>.py and --workdir=DIR are required")
  if not flags.FLAGS["verbosity"].present:  # orbax and grain are chatty at INFO
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  from mergevq_jax.train.trainer import train
  os.makedirs(_WORKDIR.value, exist_ok=True)
  summary = train(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  cli.run(main)
