"""Training throughput: compdiff's default training step vs a plain diffusers UNet2DModel loop.

Both train on the same rendered batches (rendering excluded from both timings) with AdamW
and eps-MSE, batch 64 at 32x32, interleaved step by step in one process so that load from
other processes hits both alike. The plain loop is what a diffusers user writes: a
UNet2DModel of the same widths (so nearly the same parameter count), fp32, no condition.
compdiff's step is the default config of ``compdiff train``: the conditional UNet (bump
channel + position embedding) under bf16 autocast where the CPU has it.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--threads 2]
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
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import UNet2DModel

    from compdiff.training import TrainConfig
    from compdiff.training.loop import cpu_has_bf16
    from compdiff.nn import ConditionalUNet
    from compdiff.world import WorldDataset

    torch.manual_seed(0)
    cfg = TrainConfig(task="objects", out="-")
    ours = ConditionalUNet(cfg.model_config())
    plain = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=cfg.channels,
                        layers_per_block=cfg.layers_per_block, down_block_types=("DownBlock2D",) * 3,
                        up_block_types=("UpBlock2D",) * 3, norm_num_groups=8)
    bf16 = cpu_has_bf16()
    opt_o, opt_p = torch.optim.AdamW(ours.parameters(), 1e-3), torch.optim.AdamW(plain.parameters(), 1e-3)
    data = WorldDataset("objects", 32, seed=0, length=10**6)
    B = args.batch

    def step_ours(x, t, noise, cond):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = ours(x, t, cond)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    def step_plain(x, t, noise, cond):
        loss = torch.nn.functional.mse_loss(plain(x, t).sample, noise)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    times = {"ours": [], "plain": []}
    for i in range(args.steps + 2):
        images, cond, _ = data.batch(range(i * B, (i + 1) * B))
        t = torch.randint(0, 1000, (B,))
        noise = torch.randn_like(images)
        x = 0.7 * images + 0.7 * noise
        for name, fn in (("plain", step_plain), ("ours", step_ours)):
            t0 = time.perf_counter()
            fn(x, t, noise, cond)
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - t0)
    n_o = sum(p.numel() for p in ours.parameters())
    n_p = sum(p.numel() for p in plain.parameters())
    ips = {k: B / statistics.median(v) for k, v in times.items()}
    print(f"# training throughput, batch {B}, 32x32, {args.threads} threads, {args.steps} interleaved steps; "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| loop | parameters | precision | images/s (median step) |")
    print("|---|---|---|---|")
    print(f"| plain diffusers UNet2DModel | {n_p / 1e6:.2f}M | fp32 | {ips['plain']:.1f} |")
    print(f"| compdiff train default | {n_o / 1e6:.2f}M | {'bf16 autocast' if bf16 else 'fp32'} | {ips['ours']:.1f} |")
    print(f"\nratio compdiff / plain: {ips['ours'] / ips['plain']:.2f}x")


if __name__ == "__main__":
    main()
