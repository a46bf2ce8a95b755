#!/usr/bin/env bash
# Trains the models shipped in src/compdiff/weights/ on the CPU. Usage:
#   OMP_NUM_THREADS=1 bench/train_shipped.sh objects   # -> runs/objects32 (model in runs/objects32/model)
#   rm -rf src/compdiff/weights/objects32 && cp -r runs/objects32/model src/compdiff/weights/objects32
# Resumable: run the same command again after an interruption (Ctrl-C saves a checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:-objects}
steps=${STEPS:-1500}
out=runs/${task}32
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
resume=()
[ -f "$out/run.json" ] && resume=(--resume)
.venv/bin/compdiff train --task "$task" --resolution 32 --steps "$steps" --batch-size 64 --lr 1e-3 \
  --channels 32,64,64 --layers-per-block 2 --checkpoint-every 100 --snapshot-every 500 \
  --seed 0 --out "$out" "${resume[@]}"
