"""channels_last against the default memory format for the world UNet's sampling forward.

Both run in one process, interleaved rep by rep, on the same inputs, so that load from other
processes hits both alike. Reports the median time of each, their ratio and the largest
difference of the outputs.

    .venv/bin/python bench/channels_last.py [--task relations] [--threads 1] [--reps 7] [--batch 128]
        [--cross-attention] [--pixel-coords] [--token-sink] [--no-spatial]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from compile_speed import timed  # bench/ is on the path when this runs as a script: the same interleaving


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="relations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cross-attention", action="store_true")
    ap.add_argument("--pixel-coords", action="store_true")
    ap.add_argument("--token-sink", action="store_true")
    ap.add_argument("--no-spatial", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from compdiff.nn import ConditionalUNet
    from compdiff.training import TrainConfig
    from compdiff.world import WorldDataset

    cfg = TrainConfig(task=args.task, out="-", cross_attention=args.cross_attention, pixel_coords=args.pixel_coords,
                      token_sink=args.token_sink, spatial=not args.no_spatial and args.task == "objects")
    torch.manual_seed(0)
    net = ConditionalUNet(cfg.model_config()).eval()
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    data = WorldDataset(args.task, cfg.resolution, seed=0, length=10**6)
    B = args.batch
    images, cond, _ = data.batch(range(B))
    t = torch.randint(0, 1000, (B,), generator=torch.Generator().manual_seed(1))
    x = 0.7 * images + 0.7 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    x_last = x.contiguous(memory_format=torch.channels_last)
    print(f"# channels_last vs default: {args.task} UNet {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
          f"(cross-attention {args.cross_attention}, pixel coords {args.pixel_coords}, sink {args.token_sink}), "
          f"batch {B}, {args.threads} thread(s), {args.reps} interleaved reps; torch {torch.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    with torch.inference_mode():
        y, y_last = net(x, t, cond), last(x_last, t, cond)  # warm-up
        a, b = timed(lambda: net(x, t, cond), args.reps, lambda: last(x_last, t, cond))
    ma, mb = statistics.median(a), statistics.median(b)
    print("| what | batch | default (s, median) | channels_last (s, median) | default / channels_last | max abs diff |")
    print("|---|---|---|---|---|---|")
    print(f"| sampling forward | {B} | {ma:.3f} | {mb:.3f} | {ma / mb:.2f}x | {(y - y_last).abs().max().item():.1e} |")


if __name__ == "__main__":
    main()
