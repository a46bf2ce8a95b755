"""One convolution under bf16 autocast against float32, on this machine's CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bf16_conv.py [--repeats 3] [--threads 1]

The layer is the shape that dominates the 32x32 world models: a 64-channel 3x3 convolution
(padding 1) on a batch of 64 images of 32x32, forward only, as in sampling and evaluation.
Prints the median time of each and their ratio, and whether the CPU reports native bf16
(``avx512_bf16`` / ``amx_bf16``). On a CPU without it, oneDNN emulates bf16 and the layer is
far slower than in float32; that is why `compdiff eval --bf16` and `compdiff sample --bf16` are
off by default and the world evaluations in BENCHMARKS run in float32.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compdiff.training.loop import cpu_has_bf16

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(64, 64, 32, 32)

    @torch.no_grad()
    def fp32():
        conv(x)

    @torch.no_grad()
    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)

    t32, t16 = timed(fp32, args.repeats), timed(bf16, args.repeats)
    print(f"CPU: {platform.processor() or platform.machine()}, native bf16: {cpu_has_bf16()}, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"conv 64->64 3x3 on (64, 64, 32, 32): float32 {t32:.3f} s, bf16 autocast {t16:.3f} s, "
          f"bf16 / float32 = {t16 / t32:.1f}x")


if __name__ == "__main__":
    main()
