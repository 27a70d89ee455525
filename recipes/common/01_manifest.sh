#!/usr/bin/env bash
# Scan an audio folder into train/valid manifests; unreadable or short files are listed in skipped.tsv.
# Called by recipes/<experiment>/01_manifest.sh with EXPERIMENT set.
set -euo pipefail
AUDIO_DIR=${AUDIO_DIR:?set AUDIO_DIR to your audio folder}
WORK=${WORK:-work/${EXPERIMENT:?}}
mkdir -p "$WORK"
mert data manifest "$AUDIO_DIR" --out "$WORK/train.tsv" --min-seconds 3 \
  --valid-percent 1 --valid-out "$WORK/valid.tsv" --report "$WORK/skipped.tsv"
