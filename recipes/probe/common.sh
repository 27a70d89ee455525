#!/usr/bin/env bash
# Sourced by the probe recipes in this folder (not run on its own). Sets strict mode and OUT (default
# runs/probe/<recipe name>), and defines
#   probe_task LAYOUT TASK [manifest options...]
# which turns $ROOT into $OUT/TASK.csv with `mert probe manifest LAYOUT` (items left out, with the reason, in
# $OUT/TASK_skipped.tsv), then probes ENCODER (default MERT-v1-95M) on it with `mert probe task=TASK`: features
# extracted once and cached, then probes per layer and on the weighted layer sum. RUN_DIR, if set, is the
# probe's run folder.
set -euo pipefail
OUT=${OUT:-runs/probe/$(basename "$0" .sh)}
mkdir -p "$OUT"

probe_task() {
  local layout=$1 task=$2
  shift 2
  mert probe manifest "$layout" "$ROOT" "$@" --out "$OUT/$task.csv" --report "$OUT/${task}_skipped.tsv"
  mert probe task="$task" encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/$task.csv" \
    ${RUN_DIR:+run_dir="$RUN_DIR"}
}
