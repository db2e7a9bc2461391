#!/usr/bin/env bash
# Multi-host TPU pod slice (v4/v5e/v5p): runs the same command on every worker; each
# host loads its own slice of the batch, orbax writes checkpoints from all hosts.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/runs/gr \
#   DATA_DIR=gs://bucket/tfds launch/tpu_pod.sh [--config.train.batch_size=256 ...]
# The repository must be checked out and installed (pip install -e .[tfds]) in
# ~/mergevq_jax on every worker (e.g. with the same gcloud ssh --worker=all).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${DATA_DIR:?set DATA_DIR}"
CONFIG="${CONFIG:-configs/tokenizer_gr.py:tpu}"
ARGS="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/mergevq_jax && python -m mergevq_jax.main --distributed \
    --config=$CONFIG --workdir=$WORKDIR \
    --config.data.source=tfds --config.data.path=$DATA_DIR $ARGS"
