"""The launchers' --dry-run prints the exact commands they would run (nothing is run)."""
import os
import subprocess

from conftest import ROOT


def dry_run(script, *args, **env):
  out = subprocess.run(["bash", str(ROOT / "launch" / script), "--dry-run", *args],
                       capture_output=True, text=True, timeout=60,
                       env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                            **env})
  assert out.returncode == 0, out.stderr
  return out.stdout.splitlines()


def test_local_two_processes_on_one_machine():
  lines = dry_run("local.sh", "--processes", "2", "--devices_per_process", "4",
                  "--config.train.steps=3", WORKDIR="/tmp/run", PORT="23456")
  assert lines[0] == f"# 2 process(es) on {os.uname().nodename}, 4 devices each"
  common = ("env XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m mergevq_jax.main "
            "--config=configs/demo_cpu.py --workdir=/tmp/run --coordinator_address=localhost:23456 "
            "--num_processes=2")
  assert lines[1] == f"{common} --process_id=0 --config.train.steps=3 "
  assert lines[2] == (f"{common} --process_id=1 --config.train.steps=3 > "
                      f"/tmp/run/logs/process_1.log 2>&1 &")
  assert dry_run("local.sh", WORKDIR="/tmp/run")[1] == (
      "env python -m mergevq_jax.main --config=configs/demo_cpu.py --workdir=/tmp/run ")


def test_tpu_pod_two_worker_slice():
  lines = dry_run("tpu_pod.sh", "--create", "v4-16", "--install", "--config.train.batch_size=64",
                  TPU_NAME="pod", ZONE="us-central2-b", WORKDIR="gs://b/runs/gr",
                  DATA_DIR="gs://b/tfds", RUN="r1", JAX_VERSION="0.10.2", PROJECT="p")
  assert lines[0] == "# slice pod: v4-16, 2 worker(s), runtime tpu-ubuntu2204-base"
  where = "--zone us-central2-b --project p"
  assert lines[1] == (f"gcloud compute tpus tpu-vm create pod {where} --accelerator-type v4-16 "
                      f"--version tpu-ubuntu2204-base")
  assert lines[2] == "git archive --format=tar.gz -o /tmp/r1.tar.gz HEAD"
  assert lines[3] == (f"gcloud compute tpus tpu-vm scp /tmp/r1.tar.gz pod:~/mergevq_jax.tar.gz "
                      f"{where} --worker=all")
  assert lines[4].startswith(f"gcloud compute tpus tpu-vm ssh pod {where} --worker=all --command")
  assert 'pip install -q -e ".[tfds,gcs]" "jax[tpu]==0.10.2"' in lines[4]
  run = lines[5]
  assert run.startswith(f"gcloud compute tpus tpu-vm ssh pod {where} --worker=all --command '")
  assert ("python -m mergevq_jax.main --distributed --config=configs/tokenizer_gr.py:tpu "
          "--workdir=gs://b/runs/gr --config.data.source=tfds --config.data.path=gs://b/tfds "
          "--config.train.batch_size=64 2>&1 | tee ~/mergevq_logs/r1.worker$(hostname).log'") in run
  assert "set -o pipefail" in run and 'LIBTPU_INIT_ARGS="--xla_tpu_enable_async_collective' in run


def test_tpu_pod_worker_counts_and_bad_type():
  for kind, workers in (("v5p-8", 1), ("v5p-32", 4), ("v5litepod-8", 1), ("v5litepod-16", 4),
                        ("v6e-64", 16)):
    line = dry_run("tpu_pod.sh", "--create", kind, TPU_NAME="t", ZONE="z", WORKDIR="gs://b/r",
                   DATA_DIR="gs://b/d")[0]
    assert f"{workers} worker(s)" in line, (kind, line)
  out = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "--dry-run", "--create",
                        "v9-8"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "TPU_NAME": "t", "ZONE": "z", "WORKDIR": "gs://b/r",
                            "DATA_DIR": "gs://b/d"})
  assert out.returncode == 2 and "unknown accelerator type 'v9-8'" in out.stderr


def test_gpu_slurm_two_nodes():
  lines = dry_run("gpu_slurm.sbatch", "--config.train.steps=10", NODES="2",
                  WORKDIR="/shared/runs/gr", DATA="/shared/imagenet")
  assert lines[0] == "# 2 node(s) x 8 GPUs = 16 processes, one per GPU"
  assert lines[1] == (
      "srun --nodes=2 --ntasks-per-node=8 --gpus-per-task=1 --kill-on-bad-exit=1 --label "
      "env XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true python -m mergevq_jax.main "
      "--distributed --config=configs/tokenizer_gr.py:gpu --workdir=/shared/runs/gr "
      "--config.data.source=folder --config.data.path=/shared/imagenet "
      "--config.data.num_workers=8 --config.train.steps=10 ")
