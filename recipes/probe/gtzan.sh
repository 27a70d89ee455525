#!/usr/bin/env bash
# GTZAN genre classification (10 classes, accuracy), MARBLE-style probing of a frozen encoder.
# Layout: $ROOT/genres/<genre>/<genre>.000NN.wav|.au (or Kaggle's $ROOT/Data/genres_original/...). Put the
# fault-filtered lists train_filtered.txt, valid_filtered.txt, test_filtered.txt (coreyker/dnn-mgr, gtzan/)
# in $ROOT to use the standard split; without them a seeded stratified 80/10/10 split is made.
# Needs: pip install -e ".[train,probe]"
set -euo pipefail
ROOT=${ROOT:?set ROOT to the GTZAN folder (the one holding genres/)}
OUT=${OUT:-runs/probe/gtzan}
mkdir -p "$OUT"

# 1. manifest (path,label,split); skipped files are listed in the report
mert probe manifest gtzan "$ROOT" --out "$OUT/gtzan_genre.csv" --report "$OUT/gtzan_genre_skipped.tsv"
# 2. probe: features extracted once and cached, then probes per layer and on the weighted layer sum
mert probe task=gtzan_genre encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/gtzan_genre.csv"
