"""Training-batch throughput: sampling + labels + rendering, Python path against torch path.

The Python path is ``WorldDataset.batch(indices)`` (numpy scenes one at a time, the
task's ``sample_concept``, ``render`` packing on the CPU); the torch path is
``WorldDataset.device_batch(generator, B, device)`` (world/batch.py). Both run in
the same process, interleaved (Python, torch, Python, ...), each timed over
``--inner`` fresh batches per repeat; the best repeat is reported.

CPU (the default; one torch thread)::

    .venv/bin/python bench/world_batch_speed.py [--batch 64] [--resolution 32] [--repeats 7]

GPU (optional, on a machine with CUDA): the torch path on the GPU, synchronised
around each timed repeat, at several batch sizes; the Python path stays on the CPU
for reference::

    python bench/world_batch_speed.py --device cuda --batch 64 256 1024
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Callable

import torch

from compdiff.world import TASKS, WorldDataset


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Seconds one call of fn takes, waiting for the device at both ends."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], None]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0
    return timed


def measure(task: str, batch: int, resolution: int, device: torch.device, repeats: int,
            inner: int) -> tuple[float, float]:
    """(Python path, torch path) scenes/s for one task, best of ``repeats`` interleaved."""
    ds = WorldDataset(task, resolution, seed=0, length=10**9)
    steps, starts = itertools.count(), itertools.count(0, batch)
    timed = _timer(device)

    def python_path() -> None:
        for _ in range(inner):
            start = next(starts)
            ds.batch(range(start, start + batch))

    def torch_path() -> None:
        for _ in range(inner):
            ds.device_batch(ds.step_generator(next(steps), 0, device), batch, device)

    python_path(), torch_path()  # warm-up: first calls, CUDA kernels, caches
    best_py = best_t = float("inf")
    for _ in range(repeats):
        best_py = min(best_py, timed(python_path))
        best_t = min(best_t, timed(torch_path))
    return batch * inner / best_py, batch * inner / best_t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=3, help="batches per timed repeat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="device of the torch path: cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), torch path on {name}, "
          f"{args.resolution}x{args.resolution}, best of {args.repeats} x {args.inner} batches")
    print("| task | batch | Python path (scenes/s) | torch path (scenes/s) | ratio |")
    print("|---|---|---|---|---|")
    for task, batch in itertools.product(args.tasks, args.batch):
        py, tp = measure(task, batch, args.resolution, device, args.repeats, args.inner)
        print(f"| {task} | {batch} | {py:,.0f} | {tp:,.0f} | {tp / py:.2f} |", flush=True)


if __name__ == "__main__":
    main()
