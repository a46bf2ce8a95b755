"""Peak memory of `compdiff sample` does not grow with --n: peak RSS at n = 8 and n = 2048.

Runs `python -m compdiff sample` with the shipped objects model (K = 2 concepts, one OR,
--steps 2 to keep it short) once per n, each in its own subprocess, writing one PNG per image
with --out-dir, and reads that child's peak resident set size (ru_maxrss from os.wait4).
Sampling goes --batch-size images at a time (default 16), so the ratio should stay near 1.
Target: ratio below 1.5.

    .venv/bin/python bench/sample_rss.py [--n 8 2048] [--steps 2] [--batch-size 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

EXPR = '("0.25,0.5" OR "0.75,0.5") AND NOT "0.5,0.2"'


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, wall seconds, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{err[-2000:]}")
    kib = usage.ru_maxrss  # Linux: KiB
    return kib / 1024, time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8, 2048])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    print(f"# compdiff sample '{EXPR}' --steps {args.steps} --batch-size {args.batch_size} --out-dir DIR, "
          f"shipped objects model, {args.threads} threads, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| n | peak RSS (MiB) | wall (s) | files |")
    print("|---|---|---|---|")
    peaks = []
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "images")
            argv = [sys.executable, "-m", "compdiff", "sample", EXPR, "--n", str(n), "--steps", str(args.steps),
                    "--batch-size", str(args.batch_size), "--out-dir", out, "--no-progress", "--device", "cpu"]
            rss, wall, _ = peak_rss_mib(argv, env)
            files = len(os.listdir(out))
        peaks.append(rss)
        print(f"| {n} | {rss:.0f} | {wall:.1f} | {files} |", flush=True)
    ratio = max(peaks) / min(peaks)
    print(f"\nratio largest/smallest peak: {ratio:.3f} (target < 1.5): {'ok' if ratio < 1.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
