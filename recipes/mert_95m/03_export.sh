#!/usr/bin/env bash
# Export the trained encoder as a release folder under WORK (default work/mert_95m); see ../common/.
EXPERIMENT=mert_95m exec bash "$(dirname "$0")/../common/03_export.sh" "$@"
