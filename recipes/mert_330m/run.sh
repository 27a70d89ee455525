#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")"
bash 01_manifest.sh && bash 02_pretrain.sh && bash 03_export.sh
