#!/usr/bin/env bash
# NSynth instrument family (11 classes) and pitch (MIDI note as the class) with a frozen encoder.
# Layout: $ROOT/nsynth-{train,valid,test}/examples.json and $ROOT/nsynth-*/audio/<note_str>.wav (the
# official json/wav archives unpacked side by side); splits are the folders.
# The train set has 289k clips: set MAX_PER_CLASS (e.g. 500) for a seeded per-class subsample of it.
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the folder holding nsynth-train, nsynth-valid and nsynth-test}
. "$(dirname "$0")/common.sh"

probe_task nsynth nsynth_instrument --task instrument ${MAX_PER_CLASS:+--max-per-class "$MAX_PER_CLASS"}
probe_task nsynth nsynth_pitch --task pitch ${MAX_PER_CLASS:+--max-per-class "$MAX_PER_CLASS"}
