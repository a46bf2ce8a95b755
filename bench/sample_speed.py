"""Wall time of the main job: 8 images, K = 3 concepts, 50 DDIM steps, 32x32, shipped model.

Times the whole `compdiff sample` path in-process (load, compose, sample, PNG), fp32 and bf16,
best of --repeats. Target: under 20 s on 2 cores.

    .venv/bin/python bench/sample_speed.py [--threads 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from compdiff.cli import main as cli

    expr = '"0.25,0.30" AND "0.70,0.35" AND "0.50,0.75"'
    print(f"# compdiff sample {expr} --n 8 --steps 50 (ddim), {args.threads} threads, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| precision | wall time (s), best of %d |" % args.repeats)
    print("|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for flags, name in (([], "fp32"), (["--bf16"], "bf16 autocast")):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = cli(["sample", expr, "--n", "8", "--steps", "50", "--no-progress",
                              "--out", os.path.join(tmp, "x.png"), *flags])
                best = min(best, time.perf_counter() - t0)
                assert rc == 0
            print(f"| {name} | {best:.1f} |", flush=True)


if __name__ == "__main__":
    main()
