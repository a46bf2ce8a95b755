#!/usr/bin/env bash
# The relations ablation of issue #33, ranked by the probe: five recipes at equal training images
# (1500 steps x 64, seed 0), each scored by bench/relation_probe.py (does the network read the
# relation word? 256 scenes, 5 noise levels, 4 noises) and by judged accuracy of composed sampling
# at K = 1 (n = 64 sets, DDPM 50, guidance 3, float32; the same sets and seeds for every variant).
# Resumable: re-run the same command; a finished training, probe or evaluation is not redone.
#
#   OMP_NUM_THREADS=1 bench/relations_probe_ablation.sh [VARIANT ...]   # default: a b c d e
#   bench/relations_probe_ablation.sh --table                          # the BENCHMARKS table
#   STEPS (default 1500), N (default 64 sets at K = 1), PROBE_N (default 256 scenes)
#
# Variants (runs/rel15-NAME, reports/rel15-NAME); every one has --cross-attention --max-objects 3,
# and every relations label leaves each attribute word out with probability 0.3 (the task's default):
#   a  the shipped recipe
#   b  a + --pixel-coords --token-sink
#   c  b + --attention-levels 2 (attention at 16x16 as well)
#   d  b + --loss-weighting min-snr
#   e  b + --prediction v
# Two variants can run side by side at one thread each: OMP_NUM_THREADS=1 ... a & ... b &
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
steps=${STEPS:-1500}
n=${N:-64}
probe_n=${PROBE_N:-256}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
base="--cross-attention --max-objects 3"
declare -A flags=(
  [a]="$base"
  [b]="$base --pixel-coords --token-sink"
  [c]="$base --pixel-coords --token-sink --attention-levels 2"
  [d]="$base --pixel-coords --token-sink --loss-weighting min-snr"
  [e]="$base --pixel-coords --token-sink --prediction v"
)
order=(a b c d e)
run_of() { if [ "$steps" = 1500 ]; then echo "rel15-$1"; else echo "rel15-$1-$steps"; fi; }

if [ "${1:-}" = "--table" ]; then
  "$py" - "$steps" "${order[@]}" <<PY
import json, sys
from pathlib import Path
from compdiff.eval.stats import wilson
steps, names = sys.argv[1], sys.argv[2:]
flags = {$(for k in "${order[@]}"; do printf '"%s": "%s", ' "$k" "${flags[$k]}"; done)}
print("| variant | flags beyond the shipped recipe | steps | probe: true relation preferred (95% CI) | gap | K = 1 accuracy (95% CI) | train images/s |")
print("|---|---|---|---|---|---|---|")
for name in names:
    run = "rel15-" + name + ("" if steps == "1500" else "-" + steps)
    extra = flags[name].replace("$base", "").strip() or "(none)"
    rate = probe = gap = acc = "-"
    m = Path("runs", run, "metrics.jsonl")
    if m.is_file():
        rows = [json.loads(l) for l in m.read_text().splitlines() if l.strip()]
        done = rows[-1]["step"] if rows else 0
        rate = f"{rows[-1]['images_per_s']:.1f}" if rows else "-"  # each row: the mean since the (re)start
        if done < int(steps):
            rate += f" (at step {done})"
    pj = Path("reports", run, "probe.json")
    if pj.is_file():
        a = json.loads(pj.read_text())[0]["probes"]["relation flipped"]["all"]
        probe, gap = f"{100*a['true lower']:.1f}% ({100*a['lo']:.1f}–{100*a['hi']:.1f})", f"{100*a['gap']:+.2f}%"
    rj = Path("reports", run, "k1", "results.json")
    if rj.is_file():
        c = json.loads(rj.read_text())["cells"]["composed/K1"]
        lo, hi = wilson(sum(c["success"]), len(c["success"]))
        acc = f"{100*c['accuracy']:.1f}% ({100*lo:.1f}–{100*hi:.1f})"
    print(f"| {name} | {extra} | {steps} | {probe} | {gap} | {acc} | {rate} |")
PY
  exit 0
fi

wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=("${order[@]}")
for name in "${wanted[@]}"; do
  [ -n "${flags[$name]+x}" ] || { echo "bench/relations_probe_ablation.sh: unknown variant $name (${order[*]})" >&2; exit 2; }
done
mkdir -p runs reports
for name in "${wanted[@]}"; do
  run=$(run_of "$name")
  # resumes an interrupted run; on a finished one it only re-exports the model
  # shellcheck disable=SC2086
  STEPS=$steps NAME=$run PYTHON=$py bench/train_shipped.sh relations ${flags[$name]} --no-progress \
    >> "runs/$run.log" 2>&1 || { echo "training $run failed: runs/$run.log" >&2; exit 1; }
  [ -f "reports/$run/probe.json" ] || "$py" bench/relation_probe.py "runs/$run/model" --n "$probe_n" \
    --out "reports/$run/probe.json"
  [ -f "reports/$run/k1/results.json" ] || "$py" -m compdiff eval --task relations --components 1 --n "$n" \
    --methods composed --sampler ddpm --steps 50 --guidance-scale 3 --model "runs/$run/model" --no-progress \
    --out "reports/$run/k1"
done
