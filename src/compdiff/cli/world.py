"""``compdiff world render``: a labelled grid of ground-truth renders; ``compdiff world hold-out``:
a held-out split as JSON.

``render`` writes OUT (a PNG grid: tiles upscaled nearest-neighbour, the label under
each), OUT with suffix .txt (per image: its objects and every concept true in it) and
OUT with suffix .json (every scene's ground truth: objects with shape, color, size,
material, x, y). With ``--hold-out NAME`` the scenes come from the training world of that
split (``WorldDataset(..., hold_out=split).scene(i)``: a scene showing a held-out
combination is drawn again, as in training), and the JSON names the split. Labels: the task's ``grid_label``, drawn with the tile's own generator
(seed, index, 1): objects, every object position; relations, one true relation
(the kind a training example pairs with the image); attributes, the main
object's four values. Files are written to temporary names and renamed, so a
failure leaves no partial file.

Limits: --n 1..1024, --resolution 8..512, --scale 0..32, --columns 1..1024,
--seed 0..2**63-1, and the grid's tiles at most 16M pixels in all
(n x (resolution x scale)^2), so memory stays bounded (scenes are rendered
in chunks, straight to 8-bit).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from compdiff.atomic import output_problem, write_json, write_png, write_text
from compdiff.cli import UsageError, int_in
from compdiff.world.tasks import task_names

MAX_N = 1024
MAX_RESOLUTION = 512
MAX_SCALE = 32
MAX_COLUMNS = 1024
MAX_SEED = 2**63 - 1
#: most tile pixels in one grid, n x (resolution x scale)^2 (48 MB of RGB; --n 1024 at the default 128 px)
MAX_GRID_PIXELS = 2**24
#: pixels rendered at once (the renderer holds a few float tensors of this size)
RENDER_CHUNK_PIXELS = 2**20


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("world", help="the synthetic scene world",
                              description="The synthetic scene world.")
    sub = p.add_subparsers(dest="world_command", metavar="ACTION")
    r = sub.add_parser("render", help="write a labelled grid of rendered scenes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--task", default="objects",
                   help=f"one of {', '.join(task_names())} (default objects)")
    r.add_argument("--n", type=int_in(1, MAX_N), default=16, help=f"number of scenes (1..{MAX_N})")
    r.add_argument("--resolution", type=int_in(8, MAX_RESOLUTION), default=32,
                   help=f"image size (8..{MAX_RESOLUTION})")
    r.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="scene stream seed (>= 0, default 0)")
    r.add_argument("--columns", type=int_in(1, MAX_COLUMNS), default=8, help=f"tiles per row (1..{MAX_COLUMNS})")
    r.add_argument("--scale", type=int_in(0, MAX_SCALE), default=0,
                   help=f"upscale factor (0..{MAX_SCALE}; default 0: tiles of about 128 px); "
                   f"n x (resolution x scale)^2 must be at most {MAX_GRID_PIXELS // 2**20}M pixels")
    r.add_argument("--hold-out", metavar="NAME", default=None,
                   help="draw the scenes from the training world of this held-out split of --task")
    r.add_argument("--out", required=True,
                   help="output .png (a .txt and a .json are written beside it); files of those names are "
                   "replaced, each written whole or not at all")
    h = sub.add_parser("hold-out", help="print a held-out split (the combinations training never shows) as JSON",
                       description="Print the held-out split NAME of task T as JSON: the combinations that "
                       "'compdiff train --hold-out NAME' keeps out of every training image.")
    h.add_argument("--task", required=True, help=" | ".join(task_names()))
    h.add_argument("--name", required=True, help="the split's name (attributes: default; relations: default; "
                   "objects: le2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "world_command", None)
    if action == "hold-out":
        import json

        from compdiff.world.holdout import get_split

        print(json.dumps(get_split(args.task, args.name).to_json(), indent=1))
        return 0
    if action != "render":
        raise UsageError("expected an action: compdiff world render ... or compdiff world hold-out ...")
    from compdiff.world import get_task, render, to_uint8
    from compdiff.world.grid import make_grid

    task = get_task(args.task)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must end in .png, got '{_short(args.out)}'")
    split = None
    if args.hold_out is not None:
        from compdiff.world.holdout import get_split

        split = get_split(task.name, args.hold_out)
    for path in (out, out.with_suffix(".txt"), out.with_suffix(".json")):
        problem = output_problem(path, create_parents=False)
        if problem:
            raise UsageError(f"--out {_short(str(path))}: {problem}")
    scale = args.scale or max(1, round(128 / args.resolution))
    tile_pixels = args.n * (args.resolution * scale) ** 2
    if tile_pixels > MAX_GRID_PIXELS:
        raise UsageError(
            f"--n {args.n} tiles of --resolution {args.resolution} x --scale {scale} make "
            f"{tile_pixels / 2**20:.0f}M pixels, more than one grid holds ({MAX_GRID_PIXELS // 2**20}M); "
            "lower --n, --resolution or --scale")

    chunk = max(1, RENDER_CHUNK_PIXELS // args.resolution**2)
    images = np.empty((args.n, args.resolution, args.resolution, 3), dtype=np.uint8)
    labels, lines, truth = [], [], []
    draw = task.scene if split is None else _held_out_world(task, args.resolution, args.seed, split)
    for start in range(0, args.n, chunk):
        scenes = [draw(args.seed, i) for i in range(start, min(args.n, start + chunk))]
        images[start:start + len(scenes)] = to_uint8(render(scenes, args.resolution))
        for i, sc in enumerate(scenes, start):
            true = [task.format(c) for c in task.true_concepts(sc)]
            labels.append(task.grid_label(sc, np.random.default_rng([args.seed, i, 1])))
            objs = "; ".join(o.describe() for o in sc.objects)
            lines.append(f"[{i}] objects: {objs}")
            lines.append(f"[{i}] label: {' | '.join(labels[-1])}")
            lines.extend(f"[{i}] true: {t}" for t in true)
            truth.append({"index": i, "layout": sc.layout, "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "material": o.material,
                 "x": round(o.x, 6), "y": round(o.y, 6)} for o in sc.objects]})
    grid = make_grid(images, labels, columns=args.columns, scale=scale)
    del images
    header = (f"# compdiff world render --task {task.name} --n {args.n} --resolution "
              f"{args.resolution} --seed {args.seed}\n")
    write_png(grid, out)
    write_text(out.with_suffix(".txt"), header + "\n".join(lines) + "\n")
    meta = {"command": header[2:].strip() + (f" --hold-out {split.name}" if split else ""), "task": task.name,
            "seed": args.seed, "hold_out": split.to_json() if split else None, "scenes": truth}
    write_json(out.with_suffix(".json"), meta)
    print(f"wrote {out}, {out.with_suffix('.txt')} and {out.with_suffix('.json')}")
    return 0


def _held_out_world(task, resolution: int, seed: int, split):  # noqa: ANN001, ANN202
    """scene(seed, i) of the training world of ``split`` (the dataset's own redraws)."""
    from compdiff.world import WorldDataset

    data = WorldDataset(task, resolution, seed, hold_out=split, length=MAX_N)
    return lambda _seed, i: data.scene(i)


def _short(text: str) -> str:
    from compdiff.expr.display import excerpt

    return excerpt(text, 80)
