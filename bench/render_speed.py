"""Renderer throughput: scenes/s at several resolutions (one torch thread).

Usage: python bench/render_speed.py [--batch 256] [--repeats 5]
Prints a table: resolution, batch, scenes/s for render() alone and for
scene sampling + render (what WorldDataset.batch does).
"""
from __future__ import annotations

import argparse
import time

import torch

from compdiff.world.render import render
from compdiff.world.scene import sample_scenes


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scenes = sample_scenes(args.batch, seed=0)
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, "
          f"best of {args.repeats}; scenes have 1-5 objects")
    print(f"{'res':>5} {'render scenes/s':>16} {'sample+render scenes/s':>23}")
    for R in args.resolutions:
        render(scenes[:8], R)  # warm-up
        t_r = _best(lambda: render(scenes, R), args.repeats)
        t_sr = _best(lambda: render(sample_scenes(args.batch, seed=1), R), args.repeats)
        print(f"{R:>5} {args.batch / t_r:>16,.0f} {args.batch / t_sr:>23,.0f}")


if __name__ == "__main__":
    main()
