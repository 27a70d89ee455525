#!/usr/bin/env bash
# MERT-v1-330M pretraining (MERT-v1 training hyper-parameters): 3584 clips of 5.12 s per step, pre-LN, clip 1.0, bf16. 64 GPUs in the paper:
# NODES=8 GPUS=8 under SLURM or torchrun (see docs/pretraining.md).
set -euo pipefail
WORK=${WORK:-work/mert_330m}
GPUS=${GPUS:-8}
NODES=${NODES:-8}
ENCODEC_WEIGHTS=${ENCODEC_WEIGHTS:-null}
mert pretrain experiment=mert_330m data.manifest="$WORK/train.tsv" \
  targets.code_teacher.weights="$ENCODEC_WEIGHTS" \
  trainer.devices="$GPUS" trainer.num_nodes="$NODES" run_dir="$WORK/run" "$@"
