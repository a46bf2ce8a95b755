"""Discretisation error of every registered sampler at 50 steps, one exact Gaussian concept.

    .venv/bin/python bench/discretisation.py

For linear VP, cosine VP and rectified flow: 20,000 samples from x_T ~ N(0, I) through compose() of
one Gaussian concept with its exact prediction (tests/analytic.py), 50 trailing steps; prints the
worst coordinate's |output variance / target variance − 1| and the largest mean error. The bounds
in tests/test_sampler_contract.py (DISCRETISATION_50) are these numbers with a margin.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from analytic import default_concepts  # noqa: E402

import compdiff as cd  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    schedules = {"linear VP": cd.NoiseSchedule.linear(1000), "cosine VP": cd.NoiseSchedule.cosine(1000),
                 "rectified flow": cd.FlowSchedule()}
    print("| sampler | schedule | variance error | mean error |")
    print("|---|---|---|---|")
    for name, fn_sampler in sorted(cd.SAMPLERS.items()):
        for label, schedule in schedules.items():
            gc = default_concepts(schedule)
            mean, var = gc.product({1: 1.0})
            fn = cd.compose(gc, gc, '"1"')
            g = torch.Generator().manual_seed(0)
            x_T = torch.randn(20000, 2, generator=g, dtype=torch.float64)
            x = fn_sampler(fn, x_T, schedule, schedule.timesteps(50, "trailing"), generator=g)
            err = float((x.var(0) / var - 1).abs().max())
            print(f"| {name} | {label} | {err:.3f} | {float((x.mean(0) - mean).abs().max()):.4f} |", flush=True)


if __name__ == "__main__":
    main()
