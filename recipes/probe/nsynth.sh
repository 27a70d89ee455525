#!/usr/bin/env bash
# NSynth instrument family (11 classes) and pitch (MIDI note as the class) with a frozen encoder.
# Layout: $ROOT/nsynth-{train,valid,test}/examples.json and $ROOT/nsynth-*/audio/<note_str>.wav (the
# official json/wav archives unpacked side by side); splits are the folders.
# The train set has 289k clips: set MAX_PER_CLASS (e.g. 500) for a seeded per-class subsample of it.
# Needs: pip install -e ".[train,probe]"
set -euo pipefail
ROOT=${ROOT:?set ROOT to the folder holding nsynth-train, nsynth-valid and nsynth-test}
OUT=${OUT:-runs/probe/nsynth}
mkdir -p "$OUT"
subsample=()
if [ -n "${MAX_PER_CLASS:-}" ]; then subsample=(--max-per-class "$MAX_PER_CLASS"); fi

mert probe manifest nsynth "$ROOT" --task instrument ${subsample[@]+"${subsample[@]}"} --out "$OUT/nsynth_instrument.csv"
mert probe task=nsynth_instrument encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/nsynth_instrument.csv"

mert probe manifest nsynth "$ROOT" --task pitch ${subsample[@]+"${subsample[@]}"} --out "$OUT/nsynth_pitch.csv"
mert probe task=nsynth_pitch encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/nsynth_pitch.csv"
