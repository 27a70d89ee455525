#!/usr/bin/env bash
# GTZAN beat tracking (F-measure), MARBLE-style probing of a frozen encoder's 75 Hz frames.
# Layout: the GTZAN audio as for gtzan.sh plus the beat annotations of TempoBeatDownbeat/gtzan_tempo_beat,
# unpacked in $ROOT (e.g. $ROOT/gtzan_tempo_beat-main/beats/gtzan_blues_00000.beats). The split is the
# fault-filtered one when its lists are in $ROOT, else seeded.
# Needs: pip install -e ".[train,probe]"
set -euo pipefail
ROOT=${ROOT:?set ROOT to the folder holding the GTZAN audio and the beats/ annotations}
OUT=${OUT:-runs/probe/gtzan_beat}
mkdir -p "$OUT"

mert probe manifest gtzan-beat "$ROOT" --out "$OUT/gtzan_beat.csv" --report "$OUT/gtzan_beat_skipped.tsv"
mert probe task=gtzan_beat encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/gtzan_beat.csv"
