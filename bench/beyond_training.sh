#!/usr/bin/env bash
# "Beyond training" (issue #15): composed vs joint on combinations never seen in training.
# Usage: bench/beyond_training.sh [attributes]     (resumable: re-run the same command)
# Trains nothing; first train both models at equal compute (same network, steps, batch, width):
#   STEPS=1500 NAME=attributes32x-ho bench/train_shipped.sh attributes --cross-attention --hold-out default
#   STEPS=1500 NAME=attributes32x-ho-joint bench/train_shipped.sh attributes --cross-attention --hold-out default \
#       --joint --joint-subsets
# Both methods are sampled with the same sampler, steps, guidance scale, seeds and concept sets
# (DDPM 50 steps, guidance 3, float32, n = 256 sets per cell; on this CPU, AMD EPYC without native
# bf16, --bf16 autocast makes every convolution 50-90x slower (bench/bf16_conv.py), so it is not used). Composed + ULA gets the same
# model evaluations per image: DDPM 25 steps + 2 ULA steps on the cleaner half of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
task=${1:-attributes}
case "$task" in
  attributes) model=runs/attributes32x-ho/model joint=runs/attributes32x-ho-joint/model split=default ;;
  *) echo "bench/beyond_training.sh: unknown task $task (attributes)" >&2; exit 2 ;;
esac
common=(--task "$task" --n 256 --guidance-scale 3 --hold-out "$split" --model "$model" --no-progress)
for sets in held-out seen; do
  ks=2; [ "$sets" = seen ] && ks=1,2
  "$py" -m compdiff eval "${common[@]}" --components "$ks" --sets "$sets" --methods composed,joint \
    --joint-model "$joint" --sampler ddpm --steps 50 --out "reports/beyond-$task-$sets"
done
for sets in held-out seen; do   # K = 3 next, added to the same reports
  ks=2,3; [ "$sets" = seen ] && ks=1,2,3
  "$py" -m compdiff eval "${common[@]}" --components "$ks" --sets "$sets" --methods composed,joint \
    --joint-model "$joint" --sampler ddpm --steps 50 --out "reports/beyond-$task-$sets"
done
for sets in held-out seen; do   # composed + ULA at equal model evaluations
  ks=2,3; [ "$sets" = seen ] && ks=1,2,3
  "$py" -m compdiff eval "${common[@]}" --components "$ks" --sets "$sets" --methods composed \
    --sampler ddpm --steps 25 --correct ula --corrector-steps 2 --out "reports/beyond-$task-$sets-ula"
done
