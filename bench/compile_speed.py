"""torch.compile against eager for the world UNet: a sampling forward and a training step.

Both run in one process, interleaved rep by rep, on the same inputs, so that load from other
processes hits both alike. Reports the compile warm-up (paid once per process and batch shape),
the median time of each, their ratio and the largest difference of the outputs.

    .venv/bin/python bench/compile_speed.py [--task objects] [--threads 1] [--reps 5]
        [--forward-batch 128] [--train-batch 64] [--cross-attention] [--no-spatial]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def timed(fn, reps: int, other) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(reps):
        for f, out in ((fn, a), (other, b)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return a, b


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="objects")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--forward-batch", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--cross-attention", action="store_true")
    ap.add_argument("--no-spatial", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from compdiff.nn import ConditionalUNet
    from compdiff.training import TrainConfig
    from compdiff.world import WorldDataset

    cfg = TrainConfig(task=args.task, out="-", cross_attention=args.cross_attention,
                      spatial=not args.no_spatial and args.task == "objects")
    torch.manual_seed(0)
    net = ConditionalUNet(cfg.model_config())
    fast = torch.compile(net)
    data = WorldDataset(args.task, cfg.resolution, seed=0, length=10**6)
    print(f"# torch.compile vs eager: {args.task} UNet {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M, "
          f"{args.threads} thread(s), {args.reps} interleaved reps; torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| what | batch | compile warm-up (s) | eager (s, median) | compiled (s, median) | eager / compiled | max abs diff |")
    print("|---|---|---|---|---|---|---|")

    B = args.forward_batch
    images, cond, _ = data.batch(range(B))
    t = torch.randint(0, 1000, (B,), generator=torch.Generator().manual_seed(1))
    x = 0.7 * images + 0.7 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    net.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        y_fast = fast(x, t, cond)
        warm = time.perf_counter() - t0
        y = net(x, t, cond)
        e, c = timed(lambda: net(x, t, cond), args.reps, lambda: fast(x, t, cond))
    print(f"| sampling forward | {B} | {warm:.1f} | {statistics.median(e):.3f} | {statistics.median(c):.3f} | "
          f"{statistics.median(e) / statistics.median(c):.2f}x | {(y - y_fast).abs().max().item():.1e} |")

    B = args.train_batch
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    images, cond, _ = data.batch(range(B))
    t = torch.randint(0, 1000, (B,), generator=torch.Generator().manual_seed(3))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(4))
    x = 0.7 * images + 0.7 * noise

    def step(model):
        loss = torch.nn.functional.mse_loss(model(x, t, cond), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    step(fast)
    warm = time.perf_counter() - t0
    e, c = timed(lambda: step(net), args.reps, lambda: step(fast))
    print(f"| training step (forward, backward, AdamW) | {B} | {warm:.1f} | {statistics.median(e):.3f} | "
          f"{statistics.median(c):.3f} | {statistics.median(e) / statistics.median(c):.2f}x | - |")


if __name__ == "__main__":
    main()
