#!/usr/bin/env bash
# Scan an audio folder into train/valid manifests under WORK (default work/mert_330m); see ../common/.
EXPERIMENT=mert_330m exec bash "$(dirname "$0")/../common/01_manifest.sh" "$@"
