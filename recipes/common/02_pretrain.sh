#!/usr/bin/env bash
# `mert pretrain experiment=$EXPERIMENT` on the manifest of 01_manifest.sh, GPUS per node on NODES nodes.
# EnCodec weights: download encodec_24khz-d7cc33bc.th once (see docs/teachers.md) and set ENCODEC_WEIGHTS.
# Called by recipes/<experiment>/02_pretrain.sh with EXPERIMENT set; extra arguments are Hydra overrides.
set -euo pipefail
WORK=${WORK:-work/${EXPERIMENT:?}}
GPUS=${GPUS:-8}
NODES=${NODES:-1}
ENCODEC_WEIGHTS=${ENCODEC_WEIGHTS:-null}
mert pretrain experiment="$EXPERIMENT" data.manifest="$WORK/train.tsv" \
  targets.code_teacher.weights="$ENCODEC_WEIGHTS" \
  trainer.devices="$GPUS" trainer.num_nodes="$NODES" run_dir="$WORK/run" "$@"
