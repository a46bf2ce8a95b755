"""compdiff train: train a conditional model on the world (one CPU process, several, or GPUs)."""
from __future__ import annotations

import argparse
import sys

from compdiff.cli import float_in, int_in
from compdiff.world.tasks import task_names

#: option limits, checked while the arguments are parsed (and again by TrainConfig.validate,
#: whose compdiff.training.loop.LIMITS hold the same numbers; a test keeps them equal)
MAX_RESOLUTION = 512
MAX_STEPS = 10_000_000  # also --warmup, --checkpoint-every, --log-every, --snapshot-every
MAX_BATCH_SIZE = 4096
MAX_SEED = 2**31 - 1
MAX_LAYERS_PER_BLOCK = 8
MAX_DATA_WORKERS = 64
MAX_LR = 1.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a conditional diffusion model on a world task",
        description="Train a UNet (eps- or v-prediction) on renders of the world, one concept per image "
        "(null condition with probability --null-prob). Runs under accelerate too: "
        "'accelerate launch --multi_gpu --num_processes 2 -m compdiff train ...' (CPU processes where there is no GPU). "
        "Ctrl-C saves a checkpoint; --resume continues bit-exactly.",
        epilog="example: compdiff train --task objects --steps 3000 --batch-size 64 --out runs/objects32")
    p.add_argument("--task", required=True, help=" | ".join(task_names()))
    p.add_argument("--out", required=True,
                   help="run folder (run.json, checkpoints/, metrics.jsonl, loss.png, model/): new or empty, or "
                   "an earlier run with --resume / --overwrite")
    p.add_argument("--resolution", type=int_in(8, MAX_RESOLUTION), default=32,
                   help=f"image size, 8..{MAX_RESOLUTION}, a multiple of "
                   "2^(number of --channels - 1) (default 32)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=2000,
                   help=f"optimizer steps, 1..{MAX_STEPS:,} (default 2000)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=64,
                   help=f"images per step per process, 1..{MAX_BATCH_SIZE} (default 64)")
    p.add_argument("--lr", type=float_in(0, MAX_LR, lo_open=True), default=1e-3,
                   help=f"peak learning rate in (0, {MAX_LR:g}] (default 1e-3)")
    p.add_argument("--warmup", type=int_in(0, MAX_STEPS), default=100,
                   help=f"warm-up steps, 0..{MAX_STEPS:,} (default 100)")
    p.add_argument("--ema-decay", type=float_in(0, 1, hi_open=True), default=0.999,
                   help="EMA decay in [0, 1) (default 0.999)")
    p.add_argument("--null-prob", type=float_in(0, 1, hi_open=True), default=0.1,
                   help="null-condition dropout in [0, 1) (default 0.1)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help=f"0..{MAX_SEED} (default 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto (default): time one forward and backward of the network each way at start (a "
                   "second or two) and train in the faster, bf16 autocast only if at least 5%% faster; the "
                   "choice and both times are printed and written to the model's compdiff.json. On a GPU "
                   "that supports it, auto is bf16")
    p.add_argument("--channels", default="32,64,64",
                   help="UNet block widths: 1 to 6 comma-separated multiples of 8, each 8..1024 "
                   "(default 32,64,64)")
    p.add_argument("--layers-per-block", type=int_in(1, MAX_LAYERS_PER_BLOCK), default=2,
                   help=f"resnet layers per UNet block, 1..{MAX_LAYERS_PER_BLOCK} (default 2)")
    p.add_argument("--no-spatial", action="store_true",
                   help="objects: give the position only as a global embedding (the paper's design), "
                   "no Gaussian-bump input channel")
    p.add_argument("--attention", action="store_true", help="self-attention at the lowest resolution")
    p.add_argument("--cross-attention", action="store_true",
                   help="the lowest-resolution blocks read the condition's tokens by cross-attention, "
                        "besides the global embedding (includes --attention); objects: one token per "
                        "position (with --no-spatial, the position reaches the network as a token only)")
    p.add_argument("--attention-levels", type=int_in(1, 6), default=1,
                   help="with --cross-attention: attention at the lowest this many resolutions, 1..the number of "
                   "--channels (default 1: 8x8 for 32x32 images; 2 adds 16x16)")
    p.add_argument("--pixel-coords", action="store_true",
                   help="give the network input channels that say where each pixel is (x, y and their Fourier "
                   "features, the same for every image), so that a position read as a token (objects "
                   "--no-spatial --cross-attention) can be matched to the place it names")
    p.add_argument("--token-sink", action="store_true",
                   help="with --cross-attention: a learned token read before the condition's own, so that attention "
                   "can weigh a one-token condition (a position) more in one place than another; without it "
                   "softmax over one token weighs it 1 everywhere")
    p.add_argument("--prediction", choices=["epsilon", "v"], default="epsilon",
                   help="what the network learns to output: epsilon (the noise, default) or v (Salimans & Ho "
                   "2022); sampling always works on epsilon")
    p.add_argument("--loss-weighting", choices=["none", "min-snr"], default="none",
                   help="weights over noise levels: none (default) or min-snr (Hang et al. 2023, gamma 5)")
    p.add_argument("--joint", action="store_true",
                   help="the joint-conditioning baseline: condition on the scene's whole concept set")
    p.add_argument("--max-objects", type=int_in(1, 100), default=None,
                   help="at most this many objects per training scene, from the task's fewest to its most "
                        "(default: the task's own, objects 5, relations 5); e.g. 2 to test composition beyond "
                        "training")
    p.add_argument("--data-workers", type=int_in(0, MAX_DATA_WORKERS), default=0,
                   help=f"render the coming batches in N worker processes, 0..{MAX_DATA_WORKERS} (default 0: "
                        "inline); the batches are the same, only sooner, e.g. when a GPU waits for the renders")
    p.add_argument("--hold-out", metavar="NAME", default=None,
                   help="train on a world from which the split NAME of this task never appears, in any object of "
                        "any image ('compdiff world hold-out --task T --name NAME' prints it): attributes default, "
                        "relations default, objects le2")
    p.add_argument("--joint-subsets", action="store_true",
                   help="with --joint: each image's label is a random non-empty subset of its true concepts, so "
                        "every K asked at evaluation is inside the joint model's training distribution")
    p.add_argument("--omit-prob", type=float_in(0, 1, hi_open=True), default=None, metavar="P",
                   help="relations and described: the chance that a training label leaves out each attribute "
                        "word (default: the task's own, 0.3). 0 labels every image with complete descriptions, "
                        "the concepts a --joint model reads: use it for the composed side of that comparison. "
                        "With --joint (whose labels are otherwise whole), each concept of a label leaves out "
                        "words with this chance, so both sides can train on the same words-left-out labels")
    p.add_argument("--scenes", choices=["torch", "python"], default=None,
                   help="where training scenes are drawn: torch = sampled, labelled and rendered as tensors on the "
                        "training device (a GPU run renders on the GPU); python = per scene on the CPU (the "
                        "--joint baseline, --data-workers and tasks of your own). Default: torch where it applies; "
                        "a resumed run keeps its own")
    p.add_argument("--checkpoint-every", type=int_in(1, MAX_STEPS), default=200,
                   help=f"1..{MAX_STEPS:,} steps (default 200)")
    p.add_argument("--log-every", type=int_in(1, MAX_STEPS), default=10, help=f"1..{MAX_STEPS:,} steps (default 10)")
    p.add_argument("--snapshot-every", type=int_in(0, MAX_STEPS), default=0,
                   help="also export the EMA model every N steps to OUT/snapshots/ (for accuracy-vs-steps "
                   f"curves), 0..{MAX_STEPS:,} (default 0: off)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the training run in --out; deletes only what compdiff wrote there, and refuses "
                   "a folder that is not a run or that holds other files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _default_scenes(args: argparse.Namespace) -> str:
    """torch for a new run of a built-in task without --joint or --data-workers; a resumed run keeps what its
    run.json says (runs started before --scenes existed drew their scenes in Python)."""
    import json
    from pathlib import Path

    from compdiff.training.loop import RUN_FILE, TORCH_TASKS

    if args.resume:
        try:
            return str(json.loads((Path(args.out) / RUN_FILE).read_text()).get("scenes", "python"))
        except (OSError, ValueError, AttributeError):
            return "python"  # prepare_run_dir reports the unreadable run file
    plain = args.task in TORCH_TASKS and not args.joint and not args.data_workers
    return "torch" if plain else "python"


def run(args: argparse.Namespace) -> int:
    from compdiff.cli import UsageError
    from compdiff.training import TrainConfig, train

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UsageError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    # every setting is range-checked (TrainConfig.validate) and --out inspected before anything is written
    cfg = TrainConfig(task=args.task, out=args.out, resolution=args.resolution, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                      null_prob=args.null_prob, seed=args.seed, precision=args.precision,
                      checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                      snapshot_every=args.snapshot_every, channels=channels,
                      layers_per_block=args.layers_per_block, spatial=not args.no_spatial,
                      attention=args.attention, joint=args.joint, cross_attention=args.cross_attention,
                      max_objects=args.max_objects, data_workers=args.data_workers, hold_out=args.hold_out,
                      joint_subsets=args.joint_subsets, scenes=args.scenes or _default_scenes(args),
                      prediction="v_prediction" if args.prediction == "v" else "epsilon",
                      loss_weighting=args.loss_weighting, attention_levels=args.attention_levels,
                      pixel_coords=args.pixel_coords, token_sink=args.token_sink, omit_prob=args.omit_prob)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if result.interrupted_by:
        print(f"compdiff: {result.interrupted_by}: checkpoint saved at step {result.steps_done}; "
              f"continue with --resume", file=sys.stderr)
        return 130 if result.interrupted_by == "SIGINT" else 143
    print(f"model written to {result.model_dir} ({result.steps_done} steps)")
    return 0
