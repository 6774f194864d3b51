#!/usr/bin/env bash
# Train one phase on this machine: its GPUs, or its CPU (optionally as several simulated hosts).
#
#   launch/single_host.sh launch/configs/smoke.yaml [--set key=value ...]
#
# One process drives every local accelerator (the mesh covers them all). On CPU, NUM_PROCESSES=N
# starts N processes joined by a 127.0.0.1 coordinator (gloo collectives), each with
# DEVICES_PER_PROCESS CPU devices: the multi-host code path, on one machine.
#
# Environment:
#   NUM_PROCESSES         1 (default): one process; N > 1: N local processes (CPU only)
#   DEVICES_PER_PROCESS   CPU devices per process (XLA's host platform device count), default 1
#   PORT                  the coordinator port, default 12355
#   XLA_CACHE             JAX's persistent compilation cache folder, default runs/xla_cache
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [--set key=value ...]" >&2
  exit 2
fi
CONFIG=$1
shift
NUM_PROCESSES=${NUM_PROCESSES:-1}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
PORT=${PORT:-12355}
export JAX_COMPILATION_CACHE_DIR=${XLA_CACHE:-runs/xla_cache}
if [[ "$DEVICES_PER_PROCESS" -gt 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi

if [[ "$NUM_PROCESSES" -eq 1 ]]; then
  exec python -m vllama_jax train --config "$CONFIG" "$@"
fi

export JAX_PLATFORMS=cpu
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  python -m vllama_jax train --config "$CONFIG" "$@" --coordinator "127.0.0.1:$PORT" \
    --num-processes "$NUM_PROCESSES" --process-id "$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
