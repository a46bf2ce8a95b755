"""Measure the shipped judge on fresh ground-truth renders and print a markdown table.

    .venv/bin/python bench/judge_accuracy.py --resolution 32 --n 2000

Seeds start at 900_000_000 (training used 1_000_000 .. 1_600_000). See
compdiff/eval/judge_accuracy.py for what each column means.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--n", type=int, default=2000, help="scenes per task")
    ap.add_argument("--seed", type=int, default=900_000_000)
    ap.add_argument("--concepts", type=int, default=4, help="true (and as many false) concepts per scene")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from compdiff.eval import load_judge, markdown_table, measure
    from compdiff.world.tasks import TASKS

    torch.set_num_threads(args.threads)
    judge = load_judge(args.resolution)
    trained_on = judge.config.train.get("render_py_sha256")
    now = hashlib.sha256(Path(importlib.import_module("compdiff.world.render").__file__).read_bytes()).hexdigest()
    if trained_on != now:
        print("WARNING: compdiff/world/render.py changed since the judge was trained; retrain it "
              "(bench/train_judge.py) if the figures below dropped.\n")
    t0 = time.time()
    results = [measure(judge, name, args.n, args.seed + i, args.concepts) for i, name in enumerate(TASKS)]
    print(f"judge{args.resolution} on fresh renders ({args.n} scenes per task, seeds {args.seed}+task index), "
          f"values in %; {time.time() - t0:.0f}s\n")
    print(markdown_table(results))
    print(f"\ncommand: .venv/bin/python bench/judge_accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}")


if __name__ == "__main__":
    main()
