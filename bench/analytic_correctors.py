"""Analytic table for MCMC correction: plain vs corrected samplers on AND of Gaussian concepts.

Gaussian concepts with exact eps (tests/analytic.py), weight 1, K = 2 and 3. For each sampler
setting: output variance / product variance (the covariance is var·I; we report the
worst-off diagonal entry), max |mean error|, and model evaluations (eps_fn calls; each call is
one batched forward). N = 20000 samples, so the variance ratio's standard error is ~1%.

    .venv/bin/python bench/analytic_correctors.py          # ~1 min on one core
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from analytic import default_concepts

    from compdiff.compose import compose
    from compdiff.correctors import Corrector
    from compdiff.sampling import sample_ddim, sample_ddpm
    from compdiff.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(1000)
    gc = default_concepts(schedule)
    n = 20000
    rows = [
        ("ddpm", 250, "plain", {}),
        ("ddpm", 250, "ula, defaults (k=2, (0.5,1), c=1)", dict(corrector=Corrector("ula"))),
        ("ddpm", 250, "uhmc, defaults (k=2, γ=0.5)", dict(corrector=Corrector("uhmc"))),
        ("ddpm", 250, "ula k=6 (0.5,1) c=1", dict(corrector=Corrector("ula", steps=6))),
        ("ddpm", 250, "uhmc k=6 (0.5,1) c=1 γ=0.5", dict(corrector=Corrector("uhmc", steps=6))),
        ("ddpm", 250, "ula k=6 on the NOISIER half (0,0.5)", dict(corrector=Corrector("ula", steps=6,
                                                                                         range=(0.0, 0.5)))),
        ("ddpm", 1000, "plain", {}),
        ("ddim", 100, "plain", {}),
        ("ddim", 100, "ula, defaults", dict(corrector=Corrector("ula"))),
        ("ddim", 100, "uhmc k=6 (0.5,1) γ=0.5", dict(corrector=Corrector("uhmc", steps=6))),
        ("ddim", 400, "plain (same evaluations as k=6)", {}),
    ]
    print("| K | sampler | steps | correction | var / product var | max mean error | model evals | s |")
    print("|---|---|---|---|---|---|---|---|")
    for weights in ({1: 1.0, 2: 1.0}, {1: 1.0, 2: 1.0, 3: 1.0}):
        mean, var = gc.product(weights)
        for sampler, steps, label, options in rows:
            inner = compose(gc, gc, " AND ".join(f'"{j}"' for j in weights))
            calls = [0]

            def eps_fn(x, t, inner=inner, calls=calls):
                calls[0] += 1
                return inner(x, t)

            g = torch.Generator().manual_seed(steps)
            x_T = torch.randn(n, 2, generator=g, dtype=torch.float64)
            ts = schedule.timesteps(steps)
            t0 = time.perf_counter()
            if sampler == "ddpm":
                x = sample_ddpm(eps_fn, x_T, schedule, ts, generator=g, **options)
            else:
                x = sample_ddim(eps_fn, x_T, schedule, ts, generator=g, **options)
            dt = time.perf_counter() - t0
            d = torch.cov(x.T).diagonal() / var
            worst = d[(d - 1).abs().argmax()].item()
            err = (x.mean(0) - mean).abs().max().item()
            print(f"| {len(weights)} | {sampler} | {steps} | {label} | {worst:.3f} | {err:.3f} | {calls[0]} | {dt:.1f} |")


if __name__ == "__main__":
    main()
