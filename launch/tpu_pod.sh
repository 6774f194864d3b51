#!/usr/bin/env bash
# Train one phase on every worker of a Cloud TPU pod slice, with one command.
#
#   launch/tpu_pod.sh TPU_NAME ZONE launch/configs/video_finetune.yaml [--set key=value ...]
#
# Every worker runs the same `vllama-jax train ... --distributed`; jax.distributed.initialize() finds
# the pod's other workers by itself, each worker reads its shard of every global batch, and the mesh
# axes of size -1 take all chips of the slice. output_dir (and data.folder) must be storage that every
# worker sees at the same path (a Filestore/NFS mount or a gcsfuse mount), since Orbax writes one
# checkpoint from all workers and the next phase reads it.
#
# Environment:
#   REPO_DIR      the repository on the workers (default ~/vllama-jax)
#   SYNC=1        first copy this checkout to every worker (gcloud scp), then install it
#   XLA_CACHE     a shared folder for JAX's persistent compilation cache (a restart after a
#                 preemption then skips compiling); default $REPO_DIR/runs/xla_cache on each worker
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [--set key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3
shift 3
REPO_DIR=${REPO_DIR:-'~/vllama-jax'}
XLA_CACHE=${XLA_CACHE:-"$REPO_DIR/runs/xla_cache"}
ARGS=$(printf ' %q' "$@")

if [[ "${SYNC:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all "$(git rev-parse --show-toplevel)"/. \
    "$TPU_NAME:$REPO_DIR"
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "cd $REPO_DIR && pip install -q -e . 'jax[tpu]==0.10.2'"
fi

# All workers at once; a worker's failure ends the command with its exit status.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR &&
  JAX_COMPILATION_CACHE_DIR=$XLA_CACHE python -m vllama_jax train --config $CONFIG --distributed$ARGS"
