#!/usr/bin/env bash
# Trains the world models (the shipped ones in src/compdiff/weights/ and the baselines). Usage:
#   OMP_NUM_THREADS=1 bench/train_shipped.sh objects   # -> runs/objects32 (model in runs/objects32/model)
#   STEPS=6000 NAME=relations32-joint bench/train_shipped.sh relations --attention --joint
#   rm -rf src/compdiff/weights/objects32 && cp -r runs/objects32/model src/compdiff/weights/objects32
# TASK [extra `compdiff train` flags]; env STEPS (default 1500), NAME (default TASK32, the folder
# under runs/), PYTHON (default .venv/bin/python). Runs on the GPU when torch sees one (as in
# bench/gpu_round.sh), else on the CPU. Resumable: run the same command again after an
# interruption (Ctrl-C saves a checkpoint). A larger STEPS on a finished run continues it under
# the longer schedule (the same as training that long from the start if it stopped in warm-up).
# The trainer replaces this shell (exec), so a SIGTERM or SIGINT sent to it (`timeout`, Ctrl-C)
# reaches the trainer, which saves a checkpoint and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:-objects}
shift || true
steps=${STEPS:-1500}
out=runs/${NAME:-${task}32}
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
resume=()
[ -f "$out/run.json" ] && resume=(--resume)
exec "$py" -m compdiff train --task "$task" --resolution 32 --steps "$steps" --batch-size 64 --lr 1e-3 \
  --channels 32,64,64 --layers-per-block 2 --checkpoint-every 100 --snapshot-every 500 \
  --seed 0 --out "$out" "$@" "${resume[@]}"
