#!/usr/bin/env bash
# GiantSteps key detection (24 classes, enharmonic spellings merged), MARBLE-style probing.
# Layout (MARBLE's arrangement): $ROOT holds a giantsteps-key-dataset checkout (test set, 604 tracks) and a
# giantsteps-mtg-key-dataset checkout (train/valid; tracks with key confidence 2 only), each with
# annotations/key/<id>.LOFI.key and the audio fetched by its download script (audio/<id>.LOFI.mp3).
# For a single checkout instead, set SPLIT=test or SPLIT=train (unset: seeded 80/10/10 split).
# Needs: pip install -e ".[train,probe]"
set -euo pipefail
ROOT=${ROOT:?set ROOT to the folder holding the GiantSteps checkout(s)}
OUT=${OUT:-runs/probe/giantsteps}
mkdir -p "$OUT"
split=()
if [ -n "${SPLIT:-}" ]; then split=(--split "$SPLIT"); fi

mert probe manifest giantsteps "$ROOT" ${split[@]+"${split[@]}"} --out "$OUT/giantsteps_key.csv" \
  --report "$OUT/giantsteps_key_skipped.tsv"
mert probe task=giantsteps_key encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/giantsteps_key.csv"
