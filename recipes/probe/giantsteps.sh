#!/usr/bin/env bash
# GiantSteps key detection (24 classes, enharmonic spellings merged), MARBLE-style probing.
# Layout (MARBLE's arrangement): $ROOT holds a giantsteps-key-dataset checkout (test set, 604 tracks) and a
# giantsteps-mtg-key-dataset checkout (train/valid; tracks with key confidence 2 only), each with
# annotations/key/<id>.LOFI.key and the audio fetched by its download script (audio/<id>.LOFI.mp3).
# For a single checkout instead, set SPLIT=test or SPLIT=train (unset: seeded 80/10/10 split).
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the folder holding the GiantSteps checkout(s)}
. "$(dirname "$0")/common.sh"

probe_task giantsteps giantsteps_key ${SPLIT:+--split "$SPLIT"}
