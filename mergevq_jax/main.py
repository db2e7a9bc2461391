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
    "distributed", False, "Join a multi-process job whose layout JAX finds in the "
    "environment (TPU pod slices, SLURM); see mergevq_jax/distributed.py.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 "
                                   "(with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
_JOIN_TIMEOUT = flags.DEFINE_integer("join_timeout", 300, "Seconds to wait for the "
                                     "coordinator and the other processes.")


def _current_codes(codes_dir: str, tokenizer_step: int, keep, views: int) -> bool:
  """True when codes_dir holds codes of this tokenizer step with these K values and views."""
  from mergevq_jax.data import codes as codes_lib
  try:
    man = codes_lib.read_manifest(codes_dir)
  except ValueError:
    return False
  return (man.get("tokenizer_step") == tokenizer_step and man.get("views") == views
          and list(man.get("keep_values", [])) == list(keep))


def _set_aside_stale_mergear(ar_workdir: str, tokenizer_step: int) -> None:
  """A MergeAR run trained on codes of another tokenizer step is renamed
  <ar_workdir>.tokenizer_step_<its step> (kept, never deleted); a new one starts."""
  from mergevq_jax.checkpoint import MERGEAR_LAYOUT, Checkpointer
  if not os.path.isdir(os.path.join(ar_workdir, "checkpoints")) or jax.process_index() != 0:
    return
  ckpt = Checkpointer(ar_workdir, keep=1, layout=MERGEAR_LAYOUT)
  try:
    if ckpt.latest_step() is None:
      return
    had = ckpt.step_and_meta()[1].get("codes_tokenizer_step")
  finally:
    ckpt.close()
  if had is None or had == tokenizer_step:
    return
  target = f"{ar_workdir}.tokenizer_step_{had}"
  while os.path.exists(target):
    target += "_"
  os.replace(ar_workdir, target)
  print(f"warning: {ar_workdir} was trained on codes of tokenizer step {had}; moved to "
        f"{target}, a new MergeAR trains on the codes of step {tokenizer_step}",
        file=sys.stderr)


def run_stage2(config, workdir: str) -> dict:
  """Tokenize the tokenizer run's training images (unless <workdir>/codes already holds
  the codes of this tokenizer step), then train MergeAR on the codes in <workdir>/mergear
  (a MergeAR run made from an earlier tokenizer step is set aside, never resumed)."""
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
  if _current_codes(codes_dir, step, keep, s2.views):
    print(f"reusing {codes_dir} (codes of tokenizer step {step})", file=sys.stderr)
  else:
    tokenize_dataset(tokenizer, sources.source_from_config(tok_config), codes_dir, keep,
                     views=s2.views, extra_manifest={"tokenizer_workdir": os.path.abspath(workdir),
                                                     "tokenizer_step": step})
  ar_config.data.codes_dir = codes_dir
  ar_workdir = os.path.join(workdir, "mergear")
  _set_aside_stale_mergear(ar_workdir, step)
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
  if _DISTRIBUTED.value or _COORDINATOR.value:
    from mergevq_jax import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           config.platform, _JOIN_TIMEOUT.value)
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
