#!/usr/bin/env bash
# Continue pretraining MERT-v1-95M on your own audio: released encoder weights, fresh heads, short schedule.
set -euo pipefail
AUDIO_DIR=${AUDIO_DIR:?set AUDIO_DIR to your audio folder}
WORK=${WORK:-work/continue_95m}
INIT=${INIT:-m-a-p/MERT-v1-95M}        # or a release folder / URL
STEPS=${STEPS:-20000}
GPUS=${GPUS:-8}
ENCODEC_WEIGHTS=${ENCODEC_WEIGHTS:-null}
mkdir -p "$WORK"
mert data manifest "$AUDIO_DIR" --out "$WORK/train.tsv" --min-seconds 3 --report "$WORK/skipped.tsv"
mert pretrain experiment=mert_95m init_from="$INIT" data.manifest="$WORK/train.tsv" \
  targets.code_teacher.weights="$ENCODEC_WEIGHTS" \
  optim.lr=1e-4 scheduler.warmup_steps=2000 scheduler.total_steps="$STEPS" trainer.max_steps="$STEPS" \
  trainer.devices="$GPUS" run_dir="$WORK/run" "$@"
mert export "$WORK/run" "$WORK/release"
