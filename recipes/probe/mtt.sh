#!/usr/bin/env bash
# MagnaTagATune top-50 tagging (ROC-AUC / average precision), MARBLE-style probing.
# Layout: $ROOT/annotations_final.csv and $ROOT/mp3/0..f/<clip>.mp3 (the mp3.zip.00x parts joined and
# unzipped into mp3/). Split: folders 0-b train, c valid, d-f test; set SPLIT_DIR to the folder of Won et
# al.'s train.npy/valid.npy/test.npy (sota-music-tagging-models, split/mtat) to use that split instead.
# Clips without any top-50 tag are left out (counted in the report).
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the MagnaTagATune folder (the one holding annotations_final.csv)}
. "$(dirname "$0")/common.sh"

probe_task mtt mtt_tagging ${SPLIT_DIR:+--split-dir "$SPLIT_DIR"}
