#!/usr/bin/env bash
# Two nodes without a scheduler. Both see /shared at the same path; export TEMPA_CACHE and HF_HOME
# there on both (the training processes on node B read the tokenised data and the base model from the
# paths node A's run writes in its train_plan.json). On node A (rank 0; its hostname must resolve on
# node B, or set launch.main_process_ip in the recipe):
#   tempa run my-recipe.yaml --run-dir /shared/runs/my-run
# On node B:
#   tempa run my-recipe.yaml --run-dir /shared/runs/my-run --machine-rank 1
#
# Kubernetes: an indexed Job with 2 completions and parallelism 2 runs the same container on two
# pods; pass --machine-rank "$JOB_COMPLETION_INDEX" on index 1 (index 0 runs without it), and put
# launch.main_process_ip: <index-0 pod's headless-service DNS name> in the recipe.
#
# What each node then runs for a training stage (node A writes its command to
# <stage>/logs/launch.sh; PORT is the one in /shared/runs/my-run/.launch.json):
#
#   accelerate (launch: {accelerate_config: zero3, num_machines: 2, num_processes: 16}):
#     python -m accelerate.commands.launch --config_file .../zero3.yaml --num_processes 16 \
#       --num_machines 2 --machine_rank {0|1} --main_process_ip nodeA --main_process_port PORT \
#       -m tempa.sft.train_worker --plan /shared/runs/my-run/sft/train_plan.json
#
#   torchrun (launch: {launcher: torchrun, deepspeed_config: zero3, num_machines: 2, num_processes: 16}):
#     python -m torch.distributed.run --nproc_per_node=8 --nnodes=2 --node_rank={0|1} \
#       --master_addr nodeA --master_port PORT \
#       -m tempa.sft.train_worker --plan /shared/runs/my-run/sft/train_plan.json
set -euo pipefail
RECIPE=${1:?recipe.yaml}
RUN_DIR=${2:?run directory on shared storage}
RANK=${3:-0}
export TEMPA_CACHE=${TEMPA_CACHE:-$(dirname "$RUN_DIR")/.tempa-cache}   # shared, like the run directory
export HF_HOME=${HF_HOME:-$(dirname "$RUN_DIR")/.hf-home}
if [ "$RANK" = 0 ]; then
  exec tempa run "$RECIPE" --run-dir "$RUN_DIR"
fi
exec tempa run "$RECIPE" --run-dir "$RUN_DIR" --machine-rank "$RANK"
