"""compdiff train: train a conditional model on the world (one CPU process, several, or GPUs)."""
from __future__ import annotations

import argparse
import sys

from compdiff.world.tasks import task_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a conditional diffusion model on a world task",
        description="Train an eps-prediction UNet on renders of the world, one concept per image "
        "(null condition with probability --null-prob). Runs under accelerate too: "
        "'accelerate launch --num_processes 2 --cpu -m compdiff train ...'. "
        "Ctrl-C saves a checkpoint; --resume continues bit-exactly.",
        epilog="example: compdiff train --task objects --steps 3000 --batch-size 64 --out runs/objects32")
    p.add_argument("--task", required=True, help=" | ".join(task_names()))
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, loss.png, model/)")
    p.add_argument("--resolution", type=int, default=32, help="image size (default 32)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step per process (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--null-prob", type=float, default=0.1, help="null-condition dropout (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto = bf16 autocast where the CPU/GPU supports it")
    p.add_argument("--channels", default="32,64,64", help="UNet block widths (default 32,64,64)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--no-spatial", action="store_true",
                   help="objects: give the position only as a global embedding (the paper's design), "
                   "no Gaussian-bump input channel")
    p.add_argument("--attention", action="store_true", help="self-attention at the lowest resolution")
    p.add_argument("--cross-attention", action="store_true",
                   help="relations/attributes: the lowest-resolution blocks read the condition's tokens "
                        "by cross-attention, besides the global embedding (includes --attention)")
    p.add_argument("--joint", action="store_true",
                   help="the joint-conditioning baseline: condition on the scene's whole concept set")
    p.add_argument("--max-objects", type=int, default=None,
                   help="at most this many objects per training scene (default: the task's own, "
                        "objects 5, relations 5); e.g. 2 to test composition beyond training")
    p.add_argument("--data-workers", type=int, default=0,
                   help="render the coming batches in N worker processes (default 0: inline); the "
                        "batches are the same, only sooner, e.g. when a GPU waits for the renders")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also export the EMA model every N steps to OUT/snapshots/ (for accuracy-vs-steps curves)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compdiff.cli import UsageError
    from compdiff.training import TrainConfig, train

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UsageError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    cfg = TrainConfig(task=args.task, out=args.out, resolution=args.resolution, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                      null_prob=args.null_prob, seed=args.seed, precision=args.precision,
                      checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                      snapshot_every=args.snapshot_every, channels=channels,
                      layers_per_block=args.layers_per_block, spatial=not args.no_spatial,
                      attention=args.attention, joint=args.joint, cross_attention=args.cross_attention,
                      max_objects=args.max_objects, data_workers=args.data_workers)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if result.interrupted_by:
        print(f"compdiff: {result.interrupted_by}: checkpoint saved at step {result.steps_done}; "
              f"continue with --resume", file=sys.stderr)
        return 130 if result.interrupted_by == "SIGINT" else 143
    print(f"model written to {result.model_dir} ({result.steps_done} steps)")
    return 0
