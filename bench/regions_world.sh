#!/usr/bin/env bash
# Regions measured on the world (issue #18): what boxes buy against the binding problem.
# Usage: OMP_NUM_THREADS=2 bench/regions_world.sh      (resumable: re-run the same command)
#  1. trains (or resumes) the described model with the relations model's recipe and compute:
#       STEPS=5000 NAME=described32 bench/train_shipped.sh described --cross-attention --max-objects 3
#  2. judges it at K = 1..3, n = 256 sets per cell, with and without each concept's box (side 0.4,
#     hard edges): methods composed and composed-regions, the same sets and noise, DDPM 50, guidance 3;
#  3. prints the table and the breakdown (what fails, what is drawn instead).
# See docs/regions_world.md for the task, the boxes and the in-region metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
STEPS=5000 NAME=described32 PYTHON=$py bench/train_shipped.sh described --cross-attention --max-objects 3 --no-progress
"$py" -m compdiff eval --task described --components 1,2,3 --n "${N:-256}" --methods composed,composed-regions \
  --model runs/described32/model --sampler ddpm --steps 50 --guidance-scale 3 --no-progress --out reports/described-regions
"$py" bench/eval_breakdown.py reports/described-regions
