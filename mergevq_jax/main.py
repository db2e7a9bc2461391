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
import sys

import jax
from absl import flags
from ml_collections import config_flags

from mergevq_jax import cli, files, host_memory, run_dir
from mergevq_jax.stage2 import run_stage2

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
_CACHE = flags.DEFINE_string(
    "compilation_cache", "auto", "Persistent XLA compilation cache: a directory (local or "
    "gs://), '' for none, or 'auto': <workdir>/xla_cache on the gpu and tpu platforms, where "
    "a G+R step takes minutes to compile per K (a resumed or preempted job loads them), "
    "none on cpu. JAX_COMPILATION_CACHE_DIR, when set, wins.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without news from a "
                                  "process before the others stop (JAX's heartbeat).")


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ValueError("--config=configs/<name>.py and --workdir=DIR are required")
  from mergevq_jax import config as config_lib
  config, workdir = _CONFIG.value, _WORKDIR.value
  config_lib.validate(config)   # before anything reads it
  stage = config_lib.stage_of(config)
  run_dir.check_workdir(workdir)
  cache = run_dir.compilation_cache_dir(_CACHE.value, config.platform, workdir)
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  if config.platform == "cpu":   # the tunables are for XLA:CPU's per-step buffers
    host_memory.reexec_with_malloc_tunables(large=stage == "tokenizer" and (
        host_memory.large_step(config.model.image_size, config.train.batch_size)))
  if _DISTRIBUTED.value or _COORDINATOR.value:
    from mergevq_jax import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           config.platform, _JOIN_TIMEOUT.value, _HEARTBEAT.value)
  with run_dir.RunLock(workdir):   # the whole job: both stages and the codes between them
    summary = importlib.import_module(TRAINERS[stage]).train(config, workdir)
    if stage == "tokenizer" and config.stage2.mergear_config and not summary["preempted"]:
      summary["mergear"] = run_stage2(config, workdir)
      if jax.process_index() == 0:
        files.write_json(files.join(workdir, "summary.json"), summary)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=1))
  if "SIGINT" in (summary["stopped_by"], summary.get("mergear", {}).get("stopped_by")):
    sys.exit(130)   # interrupted by the user (checkpoint saved); SIGTERM exits 0


if __name__ == "__main__":
  cli.run(main)
