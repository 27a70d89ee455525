#!/usr/bin/env bash
# Export the trained encoder as a release folder (config.json, model.safetensors, meta.json).
set -euo pipefail
WORK=${WORK:-work/mert_330m}
mert export "$WORK/run" "$WORK/release"
