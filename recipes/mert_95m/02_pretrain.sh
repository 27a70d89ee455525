#!/usr/bin/env bash
# MERT-v1-95M pretraining (MERT-v1 training hyper-parameters): 400k steps of 1024 clips. One node of 8 GPUs by default.
# EnCodec weights: download encodec_24khz-d7cc33bc.th once (see docs/teachers.md) and set ENCODEC_WEIGHTS.
# Multi-node: run this same script on every node under torchrun, or submit with SLURM (see docs/pretraining.md).
set -euo pipefail
WORK=${WORK:-work/mert_95m}
GPUS=${GPUS:-8}
NODES=${NODES:-1}
ENCODEC_WEIGHTS=${ENCODEC_WEIGHTS:-null}
mert pretrain experiment=mert_95m data.manifest="$WORK/train.tsv" \
  targets.code_teacher.weights="$ENCODEC_WEIGHTS" \
  trainer.devices="$GPUS" trainer.num_nodes="$NODES" run_dir="$WORK/run" "$@"
