"""Train a MergeVQ tokenizer (stage 1) or a MergeAR generator (stage 2).

  python -m mergevq_jax.main --config=configs/demo_cpu.py --workdir=/tmp/demo
  python -m mergevq_jax.main --config=configs/tokenizer_gr.py:tpu --workdir=gs://... \
      --config.data.source=tfds --config.data.path=/data/tfds
  python -m mergevq_jax.main --config=configs/mergear_l.py:tpu --workdir=... \
      --config.data.codes_dir=CODES          # codes from `python -m mergevq_jax.tokenize`

The config's `stage` key decides what is trained ('tokenizer' or 'mergear'). Resumes
from the latest checkpoint in --workdir (changed steps, lr, batch, data paths are recorded
in <workdir>/config_history.jsonl; a changed architecture is refused). One job per
--workdir: a second is refused while the first runs. SIGTERM (preemption) and Ctrl-C save
a checkpoint at the next step and end the job (exit 0 and 130); run it again to resume.
A tokenizer config with stage2.mergear_config set (the demo) also tokenizes its training
images and trains that MergeAR on them.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys

import jax
from absl import flags
from ml_collections import config_flags

from mergevq_jax import cli, host_memory, run_dir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, images).")
# stage (config.stage) -> module whose train(config, workdir) runs it
TRAINERS = {"tokenizer": "mergevq_jax.train.tokenizer_trainer",
            "mergear": "mergevq_jax.train.ar_trainer"}

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods / GPU "
    "clusters; the launch scripts set this).")


def run_stage2(config, workdir: str) -> dict:
  """Tokenize the tokenizer run's training images, then train MergeAR on the codes."""
  from mergevq_jax import pretrained
  from mergevq_jax.config import load_config_file
  from mergevq_jax.data import sources
  from mergevq_jax.data.tokenize_images import default_keep_values, tokenize_dataset
  from mergevq_jax.train import ar_trainer
  s2 = config.stage2
  ar_config = load_config_file(s2.mergear_config)
  if s2.steps > 0:
    ar_config.train.steps = s2.steps
  codes_dir = os.path.join(workdir, "codes")
  tokenizer, tok_config, step = pretrained.load_tokenizer(workdir)
  keep = [k for k in default_keep_values(tok_config) if k in ar_config.model.keep_values]
  if not keep:
    raise ValueError(f"none of the tokenizer's K values {default_keep_values(tok_config)} is "
                     f"in the MergeAR config's model.keep_values {ar_config.model.keep_values}")
  tokenize_dataset(tokenizer, sources.source_from_config(tok_config), codes_dir, keep,
                   views=s2.views, extra_manifest={"tokenizer_workdir": os.path.abspath(workdir),
                                                   "tokenizer_step": step})
  ar_config.data.codes_dir = codes_dir
  ar_workdir = os.path.join(workdir, "mergear")
  summary = ar_trainer.train(ar_config, ar_workdir)
  if summary.get("samples_png") and jax.process_index() == 0:
    shutil.copy(summary["samples_png"], os.path.join(workdir, "samples.png"))
  return summary


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ValueError("--config=configs/<name>.py and --workdir=DIR are required")
  from mergevq_jax import config as config_lib
  config, workdir = _CONFIG.value, _WORKDIR.value
  config_lib.validate(config)   # before anything reads it
  stage = config_lib.stage_of(config)
  run_dir.check_workdir(workdir)
  host_memory.reexec_with_malloc_tunables(large=stage == "tokenizer" and (
      host_memory.large_step(config.model.image_size, config.train.batch_size)))
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  with run_dir.RunLock(workdir):   # the whole job: both stages and the codes between them
    summary = importlib.import_module(TRAINERS[stage]).train(config, workdir)
    if stage == "tokenizer" and config.stage2.mergear_config and not summary["preempted"]:
      summary["mergear"] = run_stage2(config, workdir)
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
          json.dump(summary, f, indent=1)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=1))
  if "SIGINT" in (summary["stopped_by"], summary.get("mergear", {}).get("stopped_by")):
    sys.exit(130)   # interrupted by the user (checkpoint saved); SIGTERM exits 0


if __name__ == "__main__":
  cli.run(main)
