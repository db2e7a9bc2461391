#!/usr/bin/env bash
# A multi-host TPU pod slice: create (or reuse) the slice, install this checkout on every
# worker, run the main job on all workers at once (--distributed: JAX reads the slice's
# layout), one log per worker.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a WORKDIR=gs://bucket/runs/gr DATA_DIR=gs://bucket/tfds \
#     launch/tpu_pod.sh [--dry-run] [--create v5p-32] [--runtime v2-alpha-tpuv5] [--install] \
#       [main flags, e.g. --config.train.batch_size=512]
#
#   --create TYPE   create the slice if it does not exist (accelerator type, e.g. v4-16)
#   --install       copy this checkout (git archive HEAD) to every worker and pip install it
#   --dry-run       print the commands, run nothing
# Optional: PROJECT, CONFIG (default configs/tokenizer_gr.py:tpu), RUN (log name),
# JAX_VERSION (default: the local jax version), LIBTPU_INIT_ARGS (default below).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0; CREATE=""; RUNTIME=""; INSTALL=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --create) CREATE="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --install) INSTALL=1; shift ;;
    *) break ;;
  esac
done
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
: "${DATA_DIR:?set DATA_DIR (the tfds data_dir holding imagenet2012)}"
CONFIG="${CONFIG:-configs/tokenizer_gr.py:tpu}"
RUN="${RUN:-mergevq-$(date +%Y%m%d-%H%M%S)}"
JAX_VERSION="${JAX_VERSION:-$(python -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)}"
# Overlap FSDP all-gathers / reduce-scatters with compute (the flags MaxText uses).
LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS:---xla_tpu_enable_async_collective_fusion=true --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true --xla_tpu_overlap_compute_collective_tc=true --xla_enable_async_all_gather=true}"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

workers_of() {  # accelerator type -> TPU VM hosts (v4/v5p: N TensorCores, 2 per chip, 4
                # chips per host; v5e/v6e: N chips, 8 on a single host, else 4 per host)
  local family="${1%-*}" n="${1##*-}"
  case "$family" in
    v4|v5p) echo $(( n / 8 > 0 ? n / 8 : 1 )) ;;
    v5litepod|v5e|v6e) echo $(( n <= 8 ? 1 : n / 4 )) ;;
    *) echo "?" ;;
  esac
}

quote() {  # a command line as one would type it (words with spaces in single quotes)
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then out+=("$a")
    else out+=("$q${a//$q/$q\\$q$q}$q"); fi
  done
  echo "${out[*]}"
}

run() {  # print (dry run) or execute a command
  if (( DRY_RUN )); then quote "$@"; else "$@"; fi
}

if [[ -n "$CREATE" ]]; then
  [[ -n "$RUNTIME" ]] || case "$CREATE" in
    v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) echo "error: unknown accelerator type '$CREATE' (v4-N, v5p-N, v5litepod-N, v6e-N)" >&2; exit 2 ;;
  esac
  echo "# slice $TPU_NAME: $CREATE, $(workers_of "$CREATE") worker(s), runtime $RUNTIME"
  if (( DRY_RUN )) || ! "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type "$CREATE" \
      --version "$RUNTIME"
  fi
fi
if (( INSTALL )); then
  ARCHIVE="/tmp/$RUN.tar.gz"
  run git archive --format=tar.gz -o "$ARCHIVE" HEAD
  run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU_NAME:~/mergevq_jax.tar.gz" "${WHERE[@]}" --worker=all
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command \
    "rm -rf ~/mergevq_jax && mkdir -p ~/mergevq_jax && tar -xzf ~/mergevq_jax.tar.gz -C ~/mergevq_jax && cd ~/mergevq_jax && pip install -q -e \".[tfds,gcs]\" \"jax[tpu]==$JAX_VERSION\""
fi
MAIN="python -m mergevq_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR --config.data.source=tfds --config.data.path=$DATA_DIR"
for arg in "$@"; do MAIN+=" $(printf '%q' "$arg")"; done
run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command \
  "set -o pipefail && mkdir -p ~/mergevq_logs && cd ~/mergevq_jax && LIBTPU_INIT_ARGS=\"$LIBTPU_INIT_ARGS\" $MAIN 2>&1 | tee ~/mergevq_logs/$RUN.worker\$(hostname).log"
if (( DRY_RUN )); then
  echo "# logs: ~/mergevq_logs/$RUN.worker<host>.log on each worker, e.g."
  echo "#   ${GCLOUD[*]} ssh $TPU_NAME ${WHERE[*]} --worker=1 --command 'tail -f ~/mergevq_logs/$RUN.worker*.log'"
fi
