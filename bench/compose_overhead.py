"""Overhead of compose(): one composed eps call vs one bare denoiser forward on the same rows.

For K concepts and batch B the composed call sends B·(K+1) rows through the model in one
forward, then combines them. The bare forward gets the same B·(K+1) rows, already laid out.
The ratio (composed / bare) is the price of composition itself: expansion of x, the
condition rows, the weighted sum. Target <= 1.03.

Measured in one run, interleaved (bare, composed, bare, composed, ...) and reported as the
median of per-pair ratios, so load from other processes on the shared machine cancels out.
Run-to-run noise of that ratio is a few percent, larger than what it measures, so the last
column times composition's own work directly: inside each composed call, the time spent
outside the model call, over the model call's time (same call, so machine load cancels).

    .venv/bin/python bench/compose_overhead.py [--repeats 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from compdiff.compose import compose
    from compdiff.models import InferenceDenoiser
    from compdiff.nn import ConditionalUNet, ModelConfig
    from compdiff.world import get_task

    torch.manual_seed(0)
    net = ConditionalUNet(ModelConfig(task="objects", **get_task("objects").condition_spec()))
    den = InferenceDenoiser(net)
    enc = get_task("objects").encoder()
    n_params = sum(p.numel() for p in net.parameters())
    B = args.batch
    print(f"# compose overhead: ConditionalUNet {n_params / 1e6:.2f}M params, 32x32, batch {B}, "
          f"{args.threads} threads, fp32, {args.repeats} interleaved pairs")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"date {time.strftime('%Y-%m-%d')}")
    print("| K | rows per call | bare forward (ms) | composed call (ms) | ratio (median of pairs) "
          "| composition's own work / model call |")
    print("|---|---|---|---|---|---|")
    for K in (1, 2, 4, 8):
        concepts = [f"{0.1 + 0.8 * i / max(K - 1, 1):.2f},0.50" for i in range(K)]
        expr = " AND ".join(f'"{c}"' for c in concepts)
        inner = []

        def timed(x_, t_, c_):
            t0 = time.perf_counter()
            out = den(x_, t_, c_)
            inner.append(time.perf_counter() - t0)
            return out

        eps_fn = compose(timed, enc, expr, guidance_scale=3.0)
        x = torch.randn(B, 3, 32, 32)
        t = torch.full((B,), 500)
        rows = B * (K + 1)
        x_rows = x.repeat(K + 1, 1, 1, 1)
        t_rows = t.repeat(K + 1)
        c_rows = torch.cat([enc.null(), enc.encode(concepts)]).repeat_interleave(B, 0)
        for _ in range(3):  # warm-up
            den(x_rows, t_rows, c_rows)
            eps_fn(x, t)
        bare, comp, ratios, own = [], [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            den(x_rows, t_rows, c_rows)
            t1 = time.perf_counter()
            eps_fn(x, t)
            t2 = time.perf_counter()
            bare.append(t1 - t0)
            comp.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
            own.append((t2 - t1 - inner[-1]) / inner[-1])
        print(f"| {K} | {rows} | {statistics.median(bare) * 1e3:.1f} | {statistics.median(comp) * 1e3:.1f} | "
              f"{statistics.median(ratios):.3f} | {statistics.median(own) * 100:.2f}% |")


if __name__ == "__main__":
    main()
