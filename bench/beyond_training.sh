#!/usr/bin/env bash
# "Beyond training" (issue #15): composed vs joint on combinations never seen in training.
# Usage: bench/beyond_training.sh [attributes|objects|objects-ula|relations]   (resumable: re-run the same command;
# finished cells are kept, so the order below is the order of the work)
# Trains nothing; first train the models of the task at equal compute (same network, steps, batch
# and width; the joint baseline reads the set as tokens through the same cross-attention):
#   attributes (split default: held-out (color, shape) and (color, material) pairs):
#     STEPS=1500 NAME=attributes32x-ho bench/train_shipped.sh attributes --cross-attention --hold-out default
#     STEPS=1500 NAME=attributes32x-ho-joint bench/train_shipped.sh attributes --cross-attention --hold-out default \
#         --joint --joint-subsets
#   objects (split le2: scenes of at most 2 objects; positions as tokens, no bump map; input channels
#   saying where each pixel is, the same for every image, and a sink token before the position's, so
#   that attention can weigh a single token more in one place than in another: without them the
#   composed model held 27% of single positions; BENCHMARKS, "Beyond training", objects). Both are
#   evaluated at their step-2500 EMA snapshot (snapshots/step-0002500; the table's runs were stopped
#   there for time). The bump-map joint of the earlier tables is the labelled oracle-layout row, added
#   when runs/objects32-le2-oracle/model exists:
#     STEPS=3000 NAME=objects32xcs-le2 bench/train_shipped.sh objects --cross-attention --no-spatial \
#         --pixel-coords --token-sink --hold-out le2
#     STEPS=3000 NAME=objects32xcs-le2-joint bench/train_shipped.sh objects --cross-attention --no-spatial \
#         --pixel-coords --token-sink --hold-out le2 --joint --joint-subsets
#     STEPS=2500 NAME=objects32-le2-oracle bench/train_shipped.sh objects --hold-out le2 --joint --joint-subsets
#   relations (split default: 7 of the 28 color pairs never in one scene; the objects task's
#   pixel coordinates and sink token, on both models; --omit-prob 0: the composed model's labels
#   are complete descriptions, as each relation of a joint label is, and as evaluation asks):
#     STEPS=5000 NAME=relations32xcs-ho bench/train_shipped.sh relations --cross-attention --max-objects 3 \
#         --pixel-coords --token-sink --hold-out default --omit-prob 0
#     STEPS=5000 NAME=relations32xcs-ho-joint bench/train_shipped.sh relations --cross-attention --max-objects 3 \
#         --pixel-coords --token-sink --hold-out default --joint --joint-subsets
#   COMPOSED, JOINT (attributes, relations): other model folders, e.g. a snapshot
#   (runs/NAME/snapshots/step-0002500) or a GPU round's runs/NAME/model.
# Both methods are sampled with the same sampler, steps, guidance scale, seeds and concept sets
# (DDPM 50 steps, guidance 3, float32, n = 256 sets per cell; on this CPU, AMD EPYC without native
# bf16, --bf16 autocast makes every convolution 50-90x slower (bench/bf16_conv.py), so it is not used).
# Composed + ULA gets the same model evaluations per image: DDPM 25 steps + 2 ULA steps on the
# cleaner half of the run.
# Environment: PROCS (default 1) processes per evaluation, under `accelerate launch --multi_gpu`
# (CPU processes where torch sees no GPU; the files are bit-identical to one process'); N (default
# 256) sets per cell; REPORTS (default reports) the folder the reports go under; PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
procs=${PROCS:-1} n=${N:-256} root=${REPORTS:-reports}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( procs > 1 ? 1 : 2 ))}
evaluate() {  # compdiff eval "$@" on $procs processes
  if [ "$procs" -gt 1 ]; then
    "$py" -m accelerate.commands.launch --multi_gpu --num_processes "$procs" --num_machines 1 --mixed_precision no \
      --dynamo_backend no -m compdiff eval "$@"
  else
    "$py" -m compdiff eval "$@"
  fi
}
task=${1:-attributes}
ddpm50=(--sampler ddpm --steps 50)
ula=(--sampler ddpm --steps 25 --correct ula --corrector-steps 2)   # the same model evaluations per image
case "$task" in
  attributes) split=default held=2,3 ;;   # a held-out set asks for a held-out pair: K >= 2
  relations) split=default held=1,2,3 ;;  # one relation can ask for a held-out color pair
  objects|objects-ula)   # K = 1..5 over all sets: K <= 2 as in training, K >= 3 beyond it
    # objects-ula (composed + ULA) is its own report: run it beside `objects` on another core
    # COMPOSED, JOINT, ORACLE: other model folders (a GPU round's runs/NAME/model, say)
    comp=${COMPOSED:-runs/objects32xcs-le2/snapshots/step-0002500}
    joint=${JOINT:-runs/objects32xcs-le2-joint/snapshots/step-0002500}
    oracle=${ORACLE:-runs/objects32-le2-oracle/model}
    common=(--task objects --n "$n" --guidance-scale 3 --hold-out le2 --model "$comp" --no-progress --components 1,2,3,4,5)
    if [ "$task" = objects ]; then
      methods=composed,joint extra=()
      [ -f "$oracle/compdiff.json" ] && methods+=,joint-oracle extra=(--oracle-joint-model "$oracle")
      evaluate "${common[@]}" "${ddpm50[@]}" --methods "$methods" --joint-model "$joint" "${extra[@]}" \
        --out "$root"/beyond-objects
    else
      evaluate "${common[@]}" "${ula[@]}" --methods composed --out "$root"/beyond-objects-ula
    fi
    exit 0 ;;
  *) echo "bench/beyond_training.sh: unknown task $task (attributes, objects, objects-ula, relations)" >&2; exit 2 ;;
esac
net=x; [ "$task" = relations ] && net=xcs
model=${COMPOSED:-runs/${task}32$net-ho/model} joint=${JOINT:-runs/${task}32$net-ho-joint/model}
common_g=(--task "$task" --n "$n" --hold-out "$split" --model "$model" --no-progress)  # all but the guidance
common=("${common_g[@]}" --guidance-scale 3)
for sets in held-out seen; do
  ks=$held; [ "$sets" = seen ] && ks=1,2,3
  evaluate "${common[@]}" "${ddpm50[@]}" --components "$ks" --sets "$sets" --methods composed,joint \
    --joint-model "$joint" --out "$root/beyond-$task-$sets"
done
for sets in held-out seen; do
  ks=$held; [ "$sets" = seen ] && ks=1,2,3
  evaluate "${common[@]}" "${ula[@]}" --components "$ks" --sets "$sets" --methods composed \
    --out "$root/beyond-$task-$sets-ula"
done
# the guidance scale, applied to both methods, on the first held-out K
k=${held%%,*}
for g in 9 5; do
  evaluate "${common_g[@]}" --guidance-scale "$g" "${ddpm50[@]}" --components "$k" --sets held-out \
    --methods composed,joint --joint-model "$joint" --out "$root/beyond-$task-held-out-g$g"
done
