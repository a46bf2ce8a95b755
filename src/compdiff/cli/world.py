"""``compdiff world render``: a labelled grid of ground-truth renders.

Writes OUT (a PNG grid: tiles upscaled nearest-neighbour, the label under
each) and OUT with suffix .txt (per image: its objects and every concept true
in it). Labels: the task's ``grid_label``, drawn with the tile's own generator
(seed, index, 1): objects, every object position; relations, one true relation
(the kind a training example pairs with the image); attributes, the main
object's four values. Files are written to temporary names and renamed, so a
failure leaves no partial file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from compdiff.atomic import write_png, write_text
from compdiff.cli import UsageError
from compdiff.world.tasks import task_names


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("world", help="the synthetic scene world",
                              description="The synthetic scene world.")
    sub = p.add_subparsers(dest="world_command", metavar="ACTION")
    r = sub.add_parser("render", help="write a labelled grid of rendered scenes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--task", default="objects",
                   help=f"one of {', '.join(task_names())} (default objects)")
    r.add_argument("--n", type=int, default=16, help="number of scenes (1..1024)")
    r.add_argument("--resolution", type=int, default=32, help="image size (8..512)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--columns", type=int, default=8)
    r.add_argument("--scale", type=int, default=0,
                   help="upscale factor (default: tiles of about 128 px)")
    r.add_argument("--out", required=True, help="output .png (a .txt is written beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "world_command", None) != "render":
        raise UsageError("expected an action: compdiff world render ...")
    from compdiff.world import get_task, render, to_uint8
    from compdiff.world.grid import make_grid

    task = get_task(args.task)
    if not 1 <= args.n <= 1024:
        raise UsageError(f"--n must be in 1..1024, got {args.n}")
    if not 8 <= args.resolution <= 512:
        raise UsageError(f"--resolution must be in 8..512, got {args.resolution}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.columns < 1 or not 0 <= args.scale <= 32:
        raise UsageError("--columns must be >= 1 and --scale in 0..32")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must end in .png, got {args.out!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out directory {str(out.parent)!r} does not exist")
    scale = args.scale or max(1, round(128 / args.resolution))

    scenes = [task.scene(args.seed, i) for i in range(args.n)]
    images = to_uint8(render(scenes, args.resolution))
    labels, lines = [], []
    for i, sc in enumerate(scenes):
        true = [task.format(c) for c in task.true_concepts(sc)]
        labels.append(task.grid_label(sc, np.random.default_rng([args.seed, i, 1])))
        objs = "; ".join(f"{o.size} {o.color} {o.material} {o.shape} at {o.x:.2f},{o.y:.2f}"
                         for o in sc.objects)
        lines.append(f"[{i}] objects: {objs}")
        lines.append(f"[{i}] label: {' | '.join(labels[-1])}")
        lines.extend(f"[{i}] true: {t}" for t in true)
    grid = make_grid(images, labels, columns=args.columns, scale=scale)
    header = (f"# compdiff world render --task {task.name} --n {args.n} --resolution "
              f"{args.resolution} --seed {args.seed}\n")
    write_png(grid, out)
    write_text(out.with_suffix(".txt"), header + "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0
