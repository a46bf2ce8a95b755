"""Judged accuracy against training steps: evaluate every snapshot of one or more runs.

Each run folder written with ``compdiff train --snapshot-every N`` holds snapshots/step-*/.
For every snapshot, composed accuracy at the given K on the same
concept sets (``compdiff eval`` machinery, resumable per snapshot), then one markdown table.

    .venv/bin/python bench/accuracy_vs_steps.py runs/objects32 runs/objects32-global --n 64 --components 1 \
        --bf16 --threads 1 --out reports/ablation
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--components", default="1,2")
    ap.add_argument("--sampler", default="ddim", help="ddim (default) or ddpm, as compdiff eval --sampler")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in the models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from compdiff.eval.composition import EvalSpec, Method, run_eval
    from compdiff.eval.judge import load_judge
    from compdiff.models import load_model

    ks = tuple(int(k) for k in args.components.split(","))
    judge = load_judge(32)
    rows = []
    for run in map(Path, args.runs):
        snaps = sorted((run / "snapshots").glob("step-*"))
        for snap in snaps:
            m = load_model(snap, bf16=args.bf16)
            spec = EvalSpec(task=m.config.task, components=ks, n=args.n, sampler=args.sampler, steps=args.steps,
                            guidance_scale=args.guidance_scale, methods=("composed",))
            method = {"composed": Method("composed", m.denoiser, m.encoder, "sum", False, m.schedule)}
            out = Path(args.out) / run.name / snap.name
            res = run_eval(spec, method, judge, out, m.config.resolution, progress=True)
            steps = json.loads((snap / "compdiff.json").read_text())["training"]["steps"]
            variant = ("bump channel + embedding" if m.config.uses_bump else
                       "tokens (cross-attention) + embedding" if m.config.cross_attention else "global embedding only")
            rows.append((run.name, variant, steps, [res["cells"][f"composed/K{k}"]["accuracy"] for k in ks]))
    lines = ["| run | conditioning | training steps | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    lines += [f"| {r} | {v} | {s} | " + " | ".join(f"{a * 100:.1f}%" for a in accs) + " |" for r, v, s, accs in rows]
    table = "\n".join(lines) + "\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
