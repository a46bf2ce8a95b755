"""Peak memory of `compdiff eval` against --n: peak RSS at n = 64 and n = 2048.

Runs `python -m compdiff eval` on the shipped objects model (K = 1, method composed, --steps 2 to
keep it short) once per n, each in its own subprocess and a fresh report folder, and reads that
child's peak resident set size (ru_maxrss from os.wait4, as bench/sample_rss.py does). Sets are
sampled --batch-size (64) at a time; what grows with n is the images and judge features kept for
the Fréchet distance (3×32×32 floats and 256 features per image).

    .venv/bin/python bench/eval_rss.py [--n 64 2048] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_rss import peak_rss_mib  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[64, 2048])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    peaks = []
    print("| n | peak RSS | wall time |")
    print("|---|---|---|")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "compdiff", "eval", "--task", "objects", "--components", "1", "--n", str(n),
                    "--methods", "composed", "--steps", "2", "--no-progress", "--out", str(Path(tmp) / "rep")]
            mib, wall, _ = peak_rss_mib(argv, env)
        peaks.append(mib)
        print(f"| {n} | {mib:.0f} MiB | {wall:.0f} s |", flush=True)
    print(f"ratio {peaks[-1] / peaks[0]:.2f}")


if __name__ == "__main__":
    main()
