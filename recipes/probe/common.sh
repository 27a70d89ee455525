#!/usr/bin/env bash
# Sourced by the probe recipes in this folder (not run on its own). Sets strict mode and OUT (default
# runs/probe/<recipe name>), and defines
#   probe_manifest LAYOUT TASK [manifest options...]: $ROOT -> $OUT/TASK.csv with `mert probe manifest LAYOUT`
#     (items left out, with the reason, in $OUT/TASK_skipped.tsv);
#   probe_task LAYOUT TASK [manifest options...]: probe_manifest, then `mert probe task=TASK` of ENCODER (default
#     MERT-v1-95M) on it: features extracted once and cached, then probes per layer and on the weighted sum.
set -euo pipefail
OUT=${OUT:-runs/probe/$(basename "$0" .sh)}
mkdir -p "$OUT"

probe_manifest() {
  local layout=$1 task=$2
  shift 2
  mert probe manifest "$layout" "$ROOT" "$@" --out "$OUT/$task.csv" --report "$OUT/${task}_skipped.tsv"
}

probe_task() {
  probe_manifest "$@"
  mert probe task="$2" encoder="${ENCODER:-MERT-v1-95M}" data.manifest="$OUT/$2.csv"
}
