#!/usr/bin/env bash
# One machine: the main job in one process, or N processes joined as one JAX job (what a
# pod does across hosts, here on localhost: for testing multi-process runs on a laptop).
#
#   launch/local.sh [--dry-run] [--processes N] [--devices_per_process D] [main flags...]
#
#   launch/local.sh                                         # the CPU demo into /tmp/mergevq_demo
#   CONFIG=configs/tokenizer_gr.py:gpu WORKDIR=runs/gr launch/local.sh \
#       --config.data.source=folder --config.data.path=/data/imagenet
#   launch/local.sh --processes 2 --devices_per_process 4   # 2 CPU processes x 4 devices
#
# With N > 1, process 0 writes to this terminal and process i to $LOG_DIR/process_<i>.log;
# the script waits for all; the first that fails stops the others (it is named, and its
# status is the script's). --dry-run prints the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0; PROCESSES=1; DEVICES=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --processes) PROCESSES="$2"; shift 2 ;;
    --devices_per_process) DEVICES="$2"; shift 2 ;;
    *) break ;;
  esac
done
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || { echo "error: --processes must be a positive integer, got '$PROCESSES'" >&2; exit 2; }
CONFIG="${CONFIG:-configs/demo_cpu.py}"
WORKDIR="${WORKDIR:-/tmp/mergevq_demo}"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"
PORT="${PORT:-12355}"
ENV=()
[[ -n "$DEVICES" ]] && ENV+=("XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES")
BASE=(python -m mergevq_jax.main --config="$CONFIG" --workdir="$WORKDIR")

process_command() {  # process index -> CMD (the main job's command line for it)
  CMD=(env "${ENV[@]}" "${BASE[@]}")
  if (( PROCESSES > 1 )); then
    CMD+=(--coordinator_address="localhost:$PORT" --num_processes="$PROCESSES" --process_id="$1")
  fi
}

if (( DRY_RUN )); then
  echo "# $PROCESSES process(es) on $(hostname)${DEVICES:+, $DEVICES devices each}"
  for ((i = 0; i < PROCESSES; i++)); do
    process_command "$i"
    line="$(printf '%q ' "${CMD[@]}" "$@")"
    (( i == 0 )) && echo "$line" || echo "$line> $LOG_DIR/process_$i.log 2>&1 &"
  done
  exit 0
fi
if (( PROCESSES == 1 )); then
  process_command 0
  exec "${CMD[@]}" "$@"
fi
mkdir -p "$LOG_DIR"
PIDS=()
for ((i = 0; i < PROCESSES; i++)); do
  process_command "$i"
  if (( i == 0 )); then
    "${CMD[@]}" "$@" &
  else
    "${CMD[@]}" "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  PIDS+=($!)
done
stop_all() { kill "${PIDS[@]}" 2>/dev/null || true; }
trap 'stop_all' INT TERM
# A process that fails leaves the others waiting in a collective (until XLA's heartbeat
# times out): stop them at once and say which one failed.
set +e
declare -A RUNNING=()
for i in "${!PIDS[@]}"; do RUNNING[${PIDS[$i]}]=$i; done
while (( ${#RUNNING[@]} )); do
  wait -n -p DONE "${!RUNNING[@]}"
  STATUS=$?
  FAILED=${RUNNING[$DONE]}
  unset "RUNNING[$DONE]"
  if (( STATUS )); then
    where=$( (( FAILED )) && echo " (log: $LOG_DIR/process_$FAILED.log)")
    echo "error: process $FAILED exited with status $STATUS$where; stopping the others" >&2
    # SIGKILL: their collectives have lost a peer, so no checkpoint can be agreed, and JAX's
    # preemption handler would take a SIGTERM as a request to save.
    kill -KILL "${!RUNNING[@]}" 2>/dev/null
    wait
    exit "$STATUS"
  fi
done
exit 0
