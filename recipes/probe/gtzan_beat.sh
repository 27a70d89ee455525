#!/usr/bin/env bash
# GTZAN beat tracking (F-measure), MARBLE-style probing of a frozen encoder's 75 Hz frames.
# Layout: the GTZAN audio as for gtzan.sh plus the beat annotations of TempoBeatDownbeat/gtzan_tempo_beat,
# unpacked in $ROOT (e.g. $ROOT/gtzan_tempo_beat-main/beats/gtzan_blues_00000.beats). The split is the
# fault-filtered one when its lists are in $ROOT, else seeded.
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the folder holding the GTZAN audio and the beats/ annotations}
. "$(dirname "$0")/common.sh"

probe_task gtzan-beat gtzan_beat
