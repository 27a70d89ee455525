#!/usr/bin/env bash
# MERT-v1-95M pretraining (MERT-v1 training hyper-parameters): 400k steps of 1024 clips. One node of 8 GPUs by default.
# Multi-node: run this same script on every node under torchrun, or submit with SLURM (see docs/pretraining.md).
EXPERIMENT=mert_95m NODES=${NODES:-1} exec bash "$(dirname "$0")/../common/02_pretrain.sh" "$@"
