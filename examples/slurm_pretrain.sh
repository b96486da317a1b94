#!/usr/bin/env bash
# Pretrain a BERT on several nodes with SLURM: one torchrun per node, one process per GPU.
#
#   sbatch examples/slurm_pretrain.sh recipes/bert_base.yaml --set train.max_steps=100000
#
# Every process reads the recipe, the prepared data cache (memory-mapped) and, for the token tasks, only
# its own rows of each micro-batch. Global rank 0 prepares the data cache first while the others wait,
# holds the run directory's lock and writes config.yaml, tokenizer/, data.json, metrics.jsonl and the
# checkpoints (with train.parallel=fsdp every process writes its own shard of each checkpoint). So the
# run directory (--out) and the cache ($XFORMER_CACHE) must be on a filesystem all nodes share.
#SBATCH --job-name=xformer-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

recipe=${1:?usage: sbatch examples/slurm_pretrain.sh RECIPE [xformer options...]}
shift
export XFORMER_CACHE=${XFORMER_CACHE:-$PWD/.cache/xformer}   # shared by every node
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
    --nnodes "$SLURM_JOB_NUM_NODES" \
    --nproc-per-node "${SLURM_GPUS_PER_NODE:-8}" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head_node:29500" \
    -m xformer pretrain "$recipe" --out "runs/$(basename "$recipe" .yaml)-$SLURM_JOB_ID" "$@"
