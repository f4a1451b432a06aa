#!/usr/bin/env bash
# Launch longer-train with torchrun, on one node or on several. All settings come from the environment;
# everything after the config is passed on as key=value config overrides.
#
#   one node, all its GPUs (or one process on a CPU machine):
#     launch/torchrun.sh configs/movielens.yaml
#   one node, 2 CPU processes on gloo (how the tests simulate 2 GPUs):
#     NPROC_PER_NODE=2 launch/torchrun.sh configs/quickstart.yaml train.max_steps=100
#   several nodes: run this on every node with the same RDZV_ENDPOINT (host:port of any one node)
#     NNODES=4 RDZV_ENDPOINT=node0:29500 launch/torchrun.sh configs/taobao.yaml
#
# NPROC_PER_NODE    processes per node (default: the number of GPUs, or 1 without GPUs)
# NNODES            nodes (default 1: --standalone, no rendezvous endpoint needed); with more, the c10d
#                   rendezvous numbers the nodes itself (no node rank to set)
# RDZV_ENDPOINT     host:port of the c10d rendezvous (multi-node)
# RDZV_ID           job id shared by all nodes (default longer-train; Slurm: $SLURM_JOB_ID)
# MAX_RESTARTS      how often torchrun restarts the workers after a failure (default 3); a restarted job
#                   resumes from the run's latest checkpoint by itself (train.resume=auto)
# SHUTDOWN_TIMEOUT  seconds the workers get, after this launcher receives SIGTERM or SIGINT, to finish their
#                   step and write a checkpoint before torchrun kills them (default 120)
# PYTHON            interpreter (default .venv/bin/python if present, else python3)
#
# The backend is chosen by the trainer: nccl on CUDA, gloo on CPU. The launcher is torchrun itself, run
# through longer_train/torchrun.py so that a stop or a failure ends with a short message, not a traceback.
set -euo pipefail

CONFIG=${1:?usage: launch/torchrun.sh CONFIG [key=value ...]}
shift
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')}
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-3}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-120}

if [[ "$NNODES" == 1 ]]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}"
        --rdzv_id="${RDZV_ID:-longer-train}")
fi

exec "$PYTHON" -m longer_train.torchrun "${RDZV[@]}" --nproc_per_node="$NPROC_PER_NODE" \
  --max-restarts="$MAX_RESTARTS" --shutdown-timeout="$SHUTDOWN_TIMEOUT" -m longer_train.train "$CONFIG" "$@"
