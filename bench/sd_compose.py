"""Benchmark: compdiff's batched composition vs the community pipeline's strategy on a
Stable-Diffusion-sized UNet.

    python bench/sd_compose.py                       # CPU, K = 1..4, prints a markdown table
    python bench/sd_compose.py --device cuda --dtype float16 --reps 10 [--sd15]

Model: a random ``UNet2DConditionModel`` of SD's layout at a realistic width: block channels
(128, 256, 256) (SD 1.x: 320, 640, 1280, 1280), cross-attention dim 768 over a 77-token
context, 4×64×64 latents (512×512 images); ``--layers-per-block`` 1 by default to keep a
CPU run near 5 minutes (SD has 2). Text embeddings are random (the text encoder runs once
per run and is not part of a denoising step).

Per denoising step, for one image and K ANDed concepts at guidance 7.5:
* compdiff: ``compose(UNetDenoiser, ...)`` (the backend's own denoiser): ONE UNet call of
  K + 1 rows;
* community: what diffusers' community ``composable_stable_diffusion`` pipeline and the
  official code do: K + 1 sequential UNet calls at batch 1, then the same formula
  (written below as a reference loop).
Both run in one process, interleaved (community, compdiff, community, ...) after a warm-up,
so that a busy shared CPU slows both alike; the median over ``--reps`` is reported.

Memory: on CPU, the peak resident set (VmHWM of /proc/self/status, reset before each timed
step by writing 5 to /proc/self/clear_refs, after glibc's malloc_trim) during the step, and
that peak minus the RSS just before the step ("extra"). Resident memory includes the model
weights (~100 MiB) and the Python/torch runtime. On CUDA,
torch.cuda.max_memory_allocated after reset_peak_memory_stats.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from compdiff import compose
from compdiff.backends.diffusers import UNetDenoiser
from compdiff.schedule import NoiseSchedule

GUIDANCE = 7.5
CONTEXT = 77
WIDTH = 768


def build_unet(layers_per_block: int, size: int, device: str, dtype: torch.dtype,
               sd15: bool = False) -> torch.nn.Module:
    """The benchmark's UNet (blocks 128, 256, 256), or with ``sd15`` SD 1.x's own layout
    (blocks 320, 640, 1280, 1280, 2 layers per block, ~860M parameters; for GPUs)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    common = dict(sample_size=size, in_channels=4, out_channels=4, cross_attention_dim=WIDTH, attention_head_dim=8)
    if sd15:  # diffusers' defaults are SD 1.x's block types
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, **common)
    else:
        unet = UNet2DConditionModel(
            block_out_channels=(128, 256, 256), layers_per_block=layers_per_block,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **common)
    return unet.to(device=device, dtype=dtype).eval()


class RandomText:
    """A ConceptEncoder stand-in: a fixed random (77, 768) embedding per concept name."""

    def __init__(self, device: str, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype

    def _embed(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, text)))
        return torch.randn(1, CONTEXT, WIDTH, generator=g).to(self.device, self.dtype)

    def encode(self, concepts):
        return torch.cat([self._embed(c) for c in concepts])

    def null(self):
        return self._embed("")


@torch.no_grad()
def community_eps(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, null: torch.Tensor,
                  embs: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """The reference loop: per image, K + 1 UNet calls at batch 1, then
    eps = eps(∅) + Σ_i w_i (eps(c_i) − eps(∅))."""
    rows = []
    for b in range(x.shape[0]):
        xb, tb = x[b:b + 1], t[b:b + 1]
        e_null = unet(xb, tb, encoder_hidden_states=null, return_dict=False)[0]
        e = e_null.clone()
        for emb, w in zip(embs, weights):
            e = e + w * (unet(xb, tb, encoder_hidden_states=emb[None], return_dict=False)[0] - e_null)
        rows.append(e)
    return torch.cat(rows)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, float, float, torch.Tensor]:
    """(seconds, peak MiB, extra MiB over the start, output) of one call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _malloc_trim()  # hand freed heap back to the OS, so that "before" is what is really in use
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        before = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kb("VmHWM") * 1024
    seconds = time.perf_counter() - start
    return seconds, peak / 2**20, (peak - before) / 2**20, out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, nproc={os.cpu_count()}, load average at start {load:.1f}"


def run(args: argparse.Namespace) -> list[str]:
    import diffusers

    dtype = getattr(torch, args.dtype)
    unet = build_unet(args.layers_per_block, args.size, args.device, dtype, args.sd15)
    schedule = NoiseSchedule.linear(1000, 0.00085, 0.012)
    denoiser = UNetDenoiser(unet, schedule, "epsilon")
    text = RandomText(args.device, dtype)
    x = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(args.device, dtype)
    t = torch.full((1,), 500, device=args.device)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    layout = ("SD 1.x layout, blocks (320, 640, 1280, 1280), layers/block 2" if args.sd15
              else f"blocks (128, 256, 256), layers/block {args.layers_per_block}")
    lines = [f"command: `{' '.join(['python'] + sys.argv)}`",
             f"machine: {machine()}; device {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}",
             f"date: {datetime.datetime.now().isoformat(timespec='minutes')}; torch {torch.__version__}, "
             f"diffusers {diffusers.__version__}",
             f"model: random UNet2DConditionModel, {layout}, "
             f"{params:.1f} M parameters, latents 4×{args.size}×{args.size}, context {CONTEXT}×{WIDTH}, "
             f"1 image, guidance {GUIDANCE}, median of {args.reps} step(s) after a warm-up",
             "",
             "| K | UNet calls × rows per step: compdiff / community | compdiff ms/step | community ms/step "
             "| speed-up | peak (extra) MiB: compdiff | peak (extra) MiB: community | max abs Δeps |",
             "|---|---|---|---|---|---|---|---|"]
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=text.null())  # warm-up
    for K in args.ks:
        concepts = [f"concept {i}" for i in range(K)]
        eps_fn = compose(denoiser, text, " AND ".join(f'"{c}"' for c in concepts), guidance_scale=GUIDANCE)
        null, embs, w = text.null(), text.encode(concepts), [GUIDANCE] * K
        ours, theirs = [], []
        if args.device.startswith("cuda"):  # kernels are chosen at the first call of each shape
            community_eps(unet, x, t, null, embs, w), eps_fn(x, t)
        for _ in range(args.reps):
            theirs.append(measure(lambda: community_eps(unet, x, t, null, embs, w), args.device))
            ours.append(measure(lambda: eps_fn(x, t), args.device))
        s_ours, s_theirs = statistics.median(m[0] for m in ours), statistics.median(m[0] for m in theirs)
        diff = (ours[-1][3].float() - theirs[-1][3].float()).abs().max().item()
        mem = [f"{max(m[1] for m in ms):.0f} ({max(m[2] for m in ms):.0f})" for ms in (ours, theirs)]
        lines.append(f"| {K} | 1 × {K + 1} / {K + 1} × 1 | {s_ours * 1e3:.1f} | {s_theirs * 1e3:.1f} | {s_theirs / s_ours:.2f}× "
                     f"| {mem[0]} | {mem[1]} | {diff:.1e} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=lambda s: [int(k) for k in s.split(",")], default=[1, 2, 3, 4],
                   help="numbers of ANDed concepts, comma-separated (default 1,2,3,4)")
    p.add_argument("--reps", type=int, default=1, help="timed steps per variant and K (median reported)")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="latent height = width (64: 512×512 images)")
    p.add_argument("--sd15", action="store_true", help="SD 1.x's full UNet layout instead (for GPUs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("\n".join(run(args)))


if __name__ == "__main__":
    main()
