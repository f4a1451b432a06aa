#!/usr/bin/env bash
# Launch longer-train with torchrun, on one node or on several. All settings come from the environment;
# everything after the config is passed on as key=value config overrides.
#
#   one node, all its GPUs (or one process on a CPU machine):
#     launch/torchrun.sh configs/movielens.yaml
#   one node, 2 CPU processes on gloo (how the tests simulate 2 GPUs):
#     NPROC_PER_NODE=2 launch/torchrun.sh configs/quickstart.yaml train.max_steps=100
#   several nodes: run this on every node with the same RDZV_ENDPOINT (host:port of any one node)
#     NNODES=4 NODE_RANK=<0..3> RDZV_ENDPOINT=node0:29500 launch/torchrun.sh configs/taobao.yaml
#
# NPROC_PER_NODE  processes per node (default: the number of GPUs, or 1 without GPUs)
# NNODES          nodes (default 1: --standalone, no rendezvous endpoint needed)
# NODE_RANK       this node's index, 0..NNODES-1 (multi-node)
# RDZV_ENDPOINT   host:port of the c10d rendezvous (multi-node)
# RDZV_ID         job id shared by all nodes (default longer-train; Slurm: $SLURM_JOB_ID)
# MAX_RESTARTS    how often torchrun restarts the workers after a failure (default 3); a restarted job
#                 resumes from the run's latest checkpoint by itself (train.resume=auto)
# PYTHON          interpreter (default .venv/bin/python if present, else python3)
#
# The backend is chosen by the trainer: nccl on CUDA, gloo on CPU.
set -euo pipefail

CONFIG=${1:?usage: launch/torchrun.sh CONFIG [key=value ...]}
shift
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')}
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-3}

if [[ "$NNODES" == 1 ]]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK for a multi-node launch}"
        --rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}"
        --rdzv_id="${RDZV_ID:-longer-train}")
fi

exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NPROC_PER_NODE" \
  --max-restarts="$MAX_RESTARTS" -m longer_train.train "$CONFIG" "$@"
