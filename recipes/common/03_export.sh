#!/usr/bin/env bash
# Export the trained encoder as a release folder (config.json, model.safetensors, meta.json).
# Called by recipes/<experiment>/03_export.sh with EXPERIMENT set.
set -euo pipefail
WORK=${WORK:-work/${EXPERIMENT:?}}
mert export "$WORK/run" "$WORK/release"
