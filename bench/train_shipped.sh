#!/usr/bin/env bash
# Trains the models shipped in src/compdiff/weights/ on the CPU. Usage:
#   bench/train_shipped.sh objects        # -> runs/objects32, then copied to src/compdiff/weights/objects32
# Resumable: run the same command again after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:-objects}
steps=${STEPS:-3000}
out=runs/${task}32
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
resume=()
[ -f "$out/run.json" ] && resume=(--resume)
.venv/bin/compdiff train --task "$task" --resolution 32 --steps "$steps" --batch-size 64 --lr 1e-3 \
  --channels 32,64,64 --layers-per-block 2 --checkpoint-every 100 --snapshot-every 500 \
  --seed 0 --out "$out" "${resume[@]}"
