#!/usr/bin/env bash
# VocalSet singing technique and singer identification (accuracy), MARBLE-style probing.
# Layout: $ROOT/FULL/<singer>/<context>/<technique>/<file>.wav (the VocalSet zip unpacked).
# Technique: MARBLE's 10 techniques by default (TECHNIQUES=all keeps every technique folder, or give a
# comma-separated list); singers f2, f8, m3, m5, m10 are the test set. Singer: 20 classes, seeded split
# by file.
# Needs: pip install -e ".[train,probe]"
set -euo pipefail
ROOT=${ROOT:?set ROOT to the VocalSet folder (the one holding FULL/)}
OUT=${OUT:-runs/probe/vocalset}
TECHNIQUES=${TECHNIQUES:-marble}
mkdir -p "$OUT"
techniques=()
if [ "$TECHNIQUES" != all ]; then techniques=(--techniques "$TECHNIQUES"); fi

mert probe manifest vocalset "$ROOT" --task technique ${techniques[@]+"${techniques[@]}"} --out "$OUT/vocalset_technique.csv"
mert probe task=vocalset_technique encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/vocalset_technique.csv"

mert probe manifest vocalset "$ROOT" --task singer --out "$OUT/vocalset_singer.csv"
mert probe task=vocalset_singer encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/vocalset_singer.csv"
