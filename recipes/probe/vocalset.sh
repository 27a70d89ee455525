#!/usr/bin/env bash
# VocalSet singing technique and singer identification (accuracy), MARBLE-style probing.
# Layout: $ROOT/FULL/<singer>/<context>/<technique>/<file>.wav (the VocalSet zip unpacked).
# Technique: MARBLE's 10 techniques by default (TECHNIQUES=all keeps every technique folder, or give a
# comma-separated list); singers f2, f8, m3, m5, m10 are the test set. Singer: 20 classes, seeded split
# by file.
# Needs: pip install -e ".[train,probe]"
ROOT=${ROOT:?set ROOT to the VocalSet folder (the one holding FULL/)}
. "$(dirname "$0")/common.sh"
TECHNIQUES=${TECHNIQUES:-marble}
if [ "$TECHNIQUES" = all ]; then TECHNIQUES=; fi

probe_task vocalset vocalset_technique --task technique ${TECHNIQUES:+--techniques "$TECHNIQUES"}
probe_task vocalset vocalset_singer --task singer
