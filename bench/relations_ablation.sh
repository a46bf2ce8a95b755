#!/usr/bin/env bash
# The relations ablation (issue #14): which choice makes the relations model bind, at equal training
# images. Each variant is the shipped recipe (bench/train_shipped.sh relations --cross-attention
# --max-objects 3: widths 32,64,64, batch 64, lr 1e-3, seed 0) with ONE change, trained for the same
# STEPS, then judged with the composed method at K = 1..3 (n = 256 sets, the same sets and seeds
# for every variant, DDPM 50, guidance 3, float32). Resumable: re-run the same command; a finished
# training or evaluation cell is not redone.
#
#   OMP_NUM_THREADS=2 bench/relations_ablation.sh [VARIANT ...]     # default: all, in this order
#   STEPS=5000 (default) sets the training length of every variant, N=256 the sets per cell;
#   `--table` prints the table.
#
# Variants (runs/rel-abl-NAME-STEPS, reports/rel-abl-NAME-STEPS):
#   base     the recipe as shipped (cross-attention at 8x8 and in the middle block)
#   levels2  --attention-levels 2: attention at 16x16 as well
#   v        --prediction v
#   minsnr   --loss-weighting min-snr
#   wide     --channels 48,96,96
#   coords   --pixel-coords: input channels saying where each pixel is
#   sink     --token-sink: a learned token before the relation's three, so attention can ignore them somewhere
# A variant costs more or less per step than base (levels2 and wide more); the table gives each
# one's measured training images/s beside its accuracy, so equal images can be read as unequal time.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
steps=${STEPS:-5000}
n=${N:-256}   # concept sets per cell (a smoke test: N=8)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
declare -A flags=(
  [base]=""
  [levels2]="--attention-levels 2"
  [v]="--prediction v"
  [minsnr]="--loss-weighting min-snr"
  [wide]="--channels 48,96,96"
  [coords]="--pixel-coords"
  [sink]="--token-sink"
)
order=(base levels2 v minsnr wide coords sink)

if [ "${1:-}" = "--table" ]; then
  "$py" - "$steps" "${order[@]}" <<'PY'
import json, sys
from pathlib import Path
from compdiff.eval.stats import wilson
steps, names = sys.argv[1], sys.argv[2:]
print("| variant | steps | train images/s | K = 1 | K = 2 | K = 3 | FD-judge K = 1 (floor) |")
print("|---|---|---|---|---|---|---|")
for name in names:
    run, rep = Path(f"runs/rel-abl-{name}-{steps}"), Path(f"reports/rel-abl-{name}-{steps}/results.json")
    rate = "-"
    if (run / "metrics.jsonl").is_file():
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
        rate = f"{rows[-1]['images_per_s']:.0f}" if rows else "-"
    cells = json.loads(rep.read_text())["cells"] if rep.is_file() else {}
    accs = []
    for k in (1, 2, 3):
        c = cells.get(f"composed/K{k}")
        if c is None:
            accs.append("-")
            continue
        lo, hi = wilson(sum(c["success"]), len(c["success"]))
        accs.append(f"{100 * c['accuracy']:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})")
    c1 = cells.get("composed/K1")
    fd = f"{c1['fd_judge']:.1f} ({c1['fd_floor']:.1f})" if c1 else "-"
    print(f"| {name} | {steps} | {rate} | " + " | ".join(accs) + f" | {fd} |")
PY
  exit 0
fi

wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=("${order[@]}")
for name in "${wanted[@]}"; do
  [ -n "${flags[$name]+x}" ] || { echo "bench/relations_ablation.sh: unknown variant $name (${order[*]})" >&2; exit 2; }
done
mkdir -p runs reports
for name in "${wanted[@]}"; do
  run=rel-abl-$name-$steps
  # resumes an interrupted run; on a finished one it only re-exports the model
  # shellcheck disable=SC2086
  STEPS=$steps NAME=$run PYTHON=$py bench/train_shipped.sh relations --cross-attention --max-objects 3 \
    ${flags[$name]} --no-progress > "runs/$run.log" 2>&1 || { echo "training $run failed: runs/$run.log" >&2; exit 1; }
  "$py" -m compdiff eval --task relations --components 1,2,3 --n "$n" --methods composed --sampler ddpm \
    --steps 50 --guidance-scale 3 --model "runs/$run/model" --no-progress --out "reports/$run"
done
