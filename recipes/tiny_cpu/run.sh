#!/usr/bin/env bash
# Tiny end-to-end run on one CPU: pretrain on synthetic audio, export, embed a generated clip.
# Needs: pip install -e ".[train]"
set -euo pipefail
OUT=${OUT:-runs/recipe_tiny_cpu}
STEPS=${STEPS:-40}

# 1. pretrain (rerunning this line resumes from $OUT/checkpoints/last.ckpt)
mert pretrain experiment=tiny_cpu trainer.max_steps="$STEPS" run_dir="$OUT" logger=csv
# 2. export a release folder
mert export "$OUT" "$OUT/release"
# 3. embed a synthetic clip with the exported encoder
mert synth "$OUT/clip.wav" --seconds 5
mert embed "$OUT/clip.wav" --model "$OUT/release" --layers all --pool mean --out "$OUT/embeddings"
