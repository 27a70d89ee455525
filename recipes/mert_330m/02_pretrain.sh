#!/usr/bin/env bash
# MERT-v1-330M pretraining (MERT-v1 training hyper-parameters): 3584 clips of 5.12 s per step, pre-LN, clip 1.0,
# bf16. 64 GPUs in the paper: NODES=8 GPUS=8 under SLURM or torchrun (see docs/pretraining.md).
EXPERIMENT=mert_330m NODES=${NODES:-8} exec bash "$(dirname "$0")/../common/02_pretrain.sh" "$@"
