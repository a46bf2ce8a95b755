#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool; H200 here), about 9 minutes:
#  1. bench/sd_compose.py on CUDA, fp16: the benchmark's UNet and SD 1.x's full layout (#6);
#  2. six world models trained side by side with bench/train_shipped.sh (#5's models and
#     baselines, all with the same recipe and the same number of steps):
#     relations32 (--attention), relations32-joint, attributes32, attributes32-joint,
#     objects32-le2 and objects32-joint-le2 (scenes of at most 2 objects); and the
#     cross-attention relations pair relations32x, relations32x-joint (scenes of at most 3
#     objects; 5 render workers each, since the GPU waits for the renders otherwise).
#     All first run the 100 warm-up steps; their speed sets STEPS for the rest so that all
#     end inside the budget (resuming after warm-up equals one run of STEPS from the start).
# Results: $OUT/<run>.tgz (model, metrics, loss plot), $OUT/sd_cuda.md; the log on stdout.
# JOBS="relations32x relations32x-joint": only these runs (the first six are the default set);
#   the held-out pairs of #15 and the relations ablation of #14 are listed below (scenes render on
#   the GPU, `--scenes torch`, the default). MAX_STEPS caps the step count (default 20000).
#   JOBS="attributes32x-ho attributes32x-ho-joint relations32x-ho relations32x-ho-joint" bench/gpu_round.sh
# AFTER="bench/beyond_training.sh objects": a command run once training is over (evaluations sample on
#   the GPU: compdiff eval --device auto), for at most AFTER_TIMEOUT seconds (default 240); reports/
#   comes back as $OUT/reports.tgz. Lower BUDGET by as much, e.g. for the objects le2 fight of #15:
#   JOBS="objects32xcs-le2 objects32xcs-le2-joint objects32-le2-oracle" BUDGET=300 SD=0 \
#     AFTER="export COMPOSED=runs/objects32xcs-le2/model JOINT=runs/objects32xcs-le2-joint/model;
#            bench/beyond_training.sh objects; bench/beyond_training.sh objects-ula" bench/gpu_round.sh
# Needs .whl/ with diffusers and its two missing dependencies (the machine has torch, not them):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
# then, through the device tool: bench/gpu_round.sh   (carry .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_round}
BUDGET=${BUDGET:-470}   # seconds from start by which training must be over
WARM=${WARM:-100}       # the warm-up steps (train_shipped's lr warm-up is 100)
WARM_TIMEOUT=${WARM_TIMEOUT:-150}  # seconds the warm-up may take (a loaded CPU smoke test wants more)
EXTRA=${EXTRA:-}        # more train flags for every job (a CPU smoke test: EXTRA="--channels 8,8,8")
SD=${SD:-1}             # 0: skip the SD benchmark
mkdir -p "$OUT"
start=$(date +%s)
el() { echo $(( $(date +%s) - start )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHON=python3 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, compdiff; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)" || exit 1

echo "== [$(el)s] SD composition benchmark"
[ "$SD" = 1 ] && { timeout 100 python3 bench/sd_compose.py --device cuda --dtype float16 --reps 10
  echo
  timeout 90 python3 bench/sd_compose.py --device cuda --dtype float16 --reps 10 --sd15; } > "$OUT/sd_cuda.md" 2>&1
[ "$SD" = 1 ] && cat "$OUT/sd_cuda.md"

jobs_=("relations32 relations --attention" "relations32-joint relations --attention --joint"
       "attributes32 attributes" "attributes32-joint attributes --joint"
       "objects32-le2 objects --max-objects 2" "objects32-joint-le2 objects --joint --max-objects 2"
       "relations32x relations --cross-attention --max-objects 3 --data-workers 5"
       "relations32x-joint relations --cross-attention --max-objects 3 --joint --data-workers 5"
       # "Beyond training" (#15; bench/beyond_training.sh): held-out splits, the joint on the same token path
       "attributes32x-ho attributes --cross-attention --hold-out default"
       "attributes32x-ho-joint attributes --cross-attention --hold-out default --joint --joint-subsets"
       "objects32xcs-le2 objects --cross-attention --no-spatial --pixel-coords --token-sink --hold-out le2"
       "objects32xcs-le2-joint objects --cross-attention --no-spatial --pixel-coords --token-sink --hold-out le2 --joint --joint-subsets"
       "objects32-le2-oracle objects --hold-out le2 --joint --joint-subsets"
       "relations32x-ho relations --cross-attention --max-objects 3 --hold-out default"
       "relations32x-ho-joint relations --cross-attention --max-objects 3 --hold-out default --joint --joint-subsets"
       # the relations ablation (#14; bench/relations_ablation.sh): one change each from relations32x
       "relations32x-levels2 relations --cross-attention --max-objects 3 --attention-levels 2"
       "relations32x-v relations --cross-attention --max-objects 3 --prediction v"
       "relations32x-minsnr relations --cross-attention --max-objects 3 --loss-weighting min-snr"
       "relations32x-coords relations --cross-attention --max-objects 3 --pixel-coords"
       "relations32x-sink relations --cross-attention --max-objects 3 --token-sink")
JOBS=${JOBS:-relations32 relations32-joint attributes32 attributes32-joint objects32-le2 objects32-joint-le2}
keep=(); for j in "${jobs_[@]}"; do set -- $j; [[ " $JOBS " == *" $1 "* ]] && keep+=("$j"); done; jobs_=("${keep[@]}")
launch() {  # launch STEPS TIMEOUT: all jobs in parallel, wait for all
  local pids=()
  for j in "${jobs_[@]}"; do
    set -- $j; local name=$1; shift
    NAME=$name STEPS=$STEPS_ OMP_NUM_THREADS=2 timeout -s TERM "$TIMEOUT_" bench/train_shipped.sh "$@" \
      --no-progress --checkpoint-every 500 --snapshot-every 0 $EXTRA > "runs/$name.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
}
mkdir -p runs
echo "== [$(el)s] warm-up: $WARM steps each, ${#jobs_[@]} jobs side by side"
t1=$(date +%s); STEPS_=$WARM TIMEOUT_=$WARM_TIMEOUT launch; t1=$(( $(date +%s) - t1 ))
for j in "${jobs_[@]}"; do set -- $j; tail -n 2 "runs/$1.log"; tail -n 1 "runs/$1/metrics.jsonl"; done
left=$(( BUDGET - $(el) - 25 ))
# rate: the slowest job's images/s over its last logged warm-up steps, 90% to be safe;
# each resumed process pays its start-up again (~15 s)
rate=$(for j in "${jobs_[@]}"; do set -- $j; tail -n 1 "runs/$1/metrics.jsonl"; done |
       python3 -c "import sys, json; print(min(json.loads(l)['images_per_s'] for l in sys.stdin) / 64)")
rate=${rate:-0}  # no job logged a step (all timed out in warm-up): train no further than 2 × WARM
steps=$(python3 -c "print(max(2*$WARM, min(${MAX_STEPS:-20000}, int(($left-15)*$rate*0.9/100)*100)))")
echo "== [$(el)s] warm-up took ${t1}s ($rate steps/s); training all to $steps steps (budget ${left}s)"
if [ "$left" -gt 60 ]; then STEPS_=$steps TIMEOUT_=$(( left + 15 )) launch; else echo "no time left to train"; fi
echo "== [$(el)s] done"
for j in "${jobs_[@]}"; do
  set -- $j
  tail -n 3 "runs/$1.log"; tail -n 1 "runs/$1/metrics.jsonl"
  cp "runs/$1.log" "runs/$1/train.log"
  tar czf "$OUT/$1.tgz" -C runs "$1/model" "$1/metrics.jsonl" "$1/run.json" "$1/train.log" $( [ -f "runs/$1/loss.png" ] && echo "$1/loss.png")
done
if [ -n "${AFTER:-}" ]; then
  echo "== [$(el)s] after training: $AFTER"
  mkdir -p reports
  timeout -s TERM "${AFTER_TIMEOUT:-240}" bash -c "$AFTER"
  echo "== [$(el)s] after: exit $?"
  tar czf "$OUT/reports.tgz" reports
fi
ls -la "$OUT"; echo "== [$(el)s] end"
