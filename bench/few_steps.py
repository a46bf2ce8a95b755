"""Accuracy and FD-judge against model evaluations per image, for every shipped model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/few_steps.py --n 64 --k 2 --out reports/few-steps      # runs, resumable
    .venv/bin/python bench/few_steps.py --n 64 --k 2 --out reports/few-steps --table               # prints the table

For each shipped model (objects, attributes, relations), each sampler in --samplers and each
budget of model evaluations per image (NFE) in --nfe, one `compdiff eval` cell (composed,
K = --k, n = --n sets, guidance scale 3): plain with NFE steps, and with the default ULA
corrector (2 steps on the cleaner half of the run, so NFE = 2·steps) with NFE/2 steps.
Every cell is its own report folder, so an interrupted run resumes where it stopped. The
table gives accuracy with its Wilson 95% interval and FD-judge (with the real-vs-real floor).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from compdiff.eval.stats import wilson

MODELS = ("objects", "attributes", "relations")


def cells(args: argparse.Namespace):
    for task in args.models:
        for sampler in args.samplers:
            for nfe in args.nfe:
                yield task, sampler, nfe, None, nfe
                if nfe % 2 == 0:
                    yield task, sampler, nfe, "ula", nfe // 2


def folder(args, task, sampler, nfe, correct) -> Path:
    return Path(args.out) / f"{task}-{sampler}-nfe{nfe}" if correct is None else \
        Path(args.out) / f"{task}-{sampler}-ula-nfe{nfe}"


def run(args: argparse.Namespace) -> None:
    for task, sampler, nfe, correct, steps in cells(args):
        cmd = [sys.executable, "-m", "compdiff", "eval", "--task", task, "--components", str(args.k), "--n",
               str(args.n), "--methods", "composed", "--sampler", sampler, "--steps", str(steps),
               "--no-progress", "--out", str(folder(args, task, sampler, nfe, correct))]
        if correct:
            cmd += ["--correct", correct, "--corrector-steps", "2"]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def table(args: argparse.Namespace) -> None:
    print(f"| model | sampler | NFE | steps | correction | accuracy (K = {args.k}) | 95% interval | FD-judge | FD floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, sampler, nfe, correct, steps in cells(args):
        path = folder(args, task, sampler, nfe, correct) / "results.json"
        if not path.is_file():
            continue
        c = json.loads(path.read_text())["cells"].get(f"composed/K{args.k}")
        if c is None:
            continue
        k = sum(c["success"])
        lo, hi = wilson(k, len(c["success"]))
        print(f"| {task} | {sampler} | {nfe} | {steps} | {correct or '—'} | {100 * c['accuracy']:.1f}% | "
              f"{100 * lo:.1f}–{100 * hi:.1f} | {c['fd_judge']:.1f} | {c['fd_floor']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpmpp-2m"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--out", default="reports/few-steps")
    ap.add_argument("--table", action="store_true", help="print the table of the finished cells and exit")
    args = ap.parse_args()
    table(args) if args.table else run(args)


if __name__ == "__main__":
    main()
