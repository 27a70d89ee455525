#!/usr/bin/env bash
# Your own labelled recordings, one folder per class (e.g. recordings/cello/*.flac, recordings/flute/*.wav):
# the label is the folder name. Put train/, valid/ and test/ at the top (ROOT/train/<label>/...) to fix the
# split; otherwise a seeded stratified 80/10/10 split is made. Compares ENCODER with a random encoder of the
# same shape.
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the folder holding one subfolder per class}
. "$(dirname "$0")/common.sh"
ENCODER=${ENCODER:-MERT-v1-95M}

probe_manifest folders multiclass
mert probe task=multiclass encoder="$ENCODER" data.manifest="$OUT/multiclass.csv" run_dir="$OUT/pretrained"
mert probe task=multiclass encoder="random:$ENCODER" data.manifest="$OUT/multiclass.csv" run_dir="$OUT/random"
mert probe compare "$OUT/pretrained" "$OUT/random" --out "$OUT/compare.md"
