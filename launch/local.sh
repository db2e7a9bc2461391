#!/usr/bin/env bash
# Single host (CPU, one GPU, or one TPU VM). Extra arguments go to mergevq_jax.main.
#   launch/local.sh                                   # the CPU demo into /tmp/mergevq_demo
#   CONFIG=configs/tokenizer_gr.py:gpu WORKDIR=runs/gr launch/local.sh --config.data.source=folder --config.data.path=/data/imagenet
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m mergevq_jax.main --config="${CONFIG:-configs/demo_cpu.py}" \
  --workdir="${WORKDIR:-/tmp/mergevq_demo}" "$@"
