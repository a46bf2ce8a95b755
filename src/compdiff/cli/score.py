"""``compdiff score IMAGE... EXPR --model M``: the model's own lift of each term for each image.

For every image, the lift of every distinct concept of EXPR (``compdiff.lift``: the denoising-loss
difference without and with the concept, ELBO-weighted over a grid of times, in nats; > 0 means the
model finds the concept present) and whether the expression holds by the selection rule
(``compdiff.select``: in some clause every positive term's lift > 0 and every NOT term's < 0).
Exit codes as every command: 0 scored (whether or not the expression holds), 2 bad input (an
unreadable image, a world model's image of the wrong size, a bad expression or option), 1 runtime error.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from compdiff.cli import UsageError, int_in
from compdiff.devices import pick_device

MAX_DRAWS = 1000
MAX_TIMES = 1000

DESCRIPTION = """\
Score images with a model's own judgement: for each image and each concept
of EXPR, the lift

  lift(x, c) = 1/2 * integral over log-SNR of E[ |eps - eps(x_t | null)|^2 - |eps - eps(x_t | c)|^2 ]

estimated on --times (default: 10 times at the centres of equal steps) with
--draws noises each (image i's noise comes from seed + i), and whether the
expression holds: in some AND clause, every positive concept's lift > 0 and
every NOT concept's lift < 0. Pipeline images are encoded to latents by the
model's VAE first. Cost: --draws x (number of times) batched forwards of
images x (concepts + 1) rows, printed as model evaluations."""

EPILOG = """\
examples:
  compdiff score a.png b.png '"0.30,0.50" AND NOT "0.70,0.50"' --model objects
  compdiff score out/*.png 'a red cube AND NOT metal' --model /models/sd15 --json"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score", help="lift of each concept for each image, and whether the expression holds",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ... anything Pillow reads)")
    p.add_argument("expr", metavar="EXPR", help="the expression whose concepts are scored")
    p.add_argument("--model", required=True,
                   help="a shipped world model (objects, attributes, relations), a 'compdiff train' output or a "
                   "local diffusers pipeline")
    p.add_argument("--times", default=None, metavar="T,T,...",
                   help="the time grid, comma-separated (integer timesteps of a VP model, floats in (0, 1) for a flow "
                   "model); default: 10 times at the centres of equal steps")
    p.add_argument("--draws", type=int_in(1, MAX_DRAWS), default=1, help="noises per time and image (default 1)")
    p.add_argument("--seed", type=int_in(0, 2**62), default=0, help="image i's noises come from seed + i (default 0)")
    p.add_argument("--weighting", choices=("elbo", "simple"), default="elbo",
                   help="elbo: each time weighted by its width in log-SNR (default); simple: equal weights")
    p.add_argument("--batch-size", type=int_in(1, 4096), default=16, help="images per model batch (default 16)")
    p.add_argument("--max-batch", type=int_in(1, 1_000_000), default=None, help="cap on rows per model call")
    p.add_argument("--device", default="auto", help="auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="diffusers pipelines' weights (auto: float16 on a GPU, float32 on the CPU)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    p.set_defaults(func=run)
    return p


def _times(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"argument --times: must be comma-separated numbers, got {text[:80]!r}") from None
    if not values or len(values) > MAX_TIMES or not all(math.isfinite(v) for v in values):
        raise UsageError(f"argument --times: 1 to {MAX_TIMES} finite numbers, got {text[:80]!r}")
    return [int(v) if v == int(v) and "." not in text else v for v in values]


def read_image(path: str):
    """(3, H, W) float32 in [-1, 1]; UsageError naming the file when Pillow cannot read it."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as err:  # missing, a directory, not an image, truncated
        raise UsageError(f"image {path!r} cannot be read: {str(err).splitlines()[0][:200] if str(err) else err}") \
            from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1) / 127.5 - 1.0


def _check_size(path: str, image, model) -> None:
    from compdiff.lift import model_vae

    H, W = image.shape[-2:]
    vae = model_vae(model)
    if vae is None:
        want = tuple(model.latent_shape[-2:])
        if (H, W) != want:
            raise UsageError(f"image {path!r} is {W}x{H} pixels but the model {model.name} takes {want[1]}x{want[0]} "
                             "images")
        return
    f = 2 * 2 ** (len(vae.config.block_out_channels) - 1)
    if H % f or W % f:
        raise UsageError(f"image {path!r} is {W}x{H} pixels: this pipeline needs sides that are multiples of {f}")


def score_images(args: argparse.Namespace) -> dict:
    """Everything score prints, as the JSON object (computed whole before anything is printed)."""
    import torch

    from compdiff.backends import open_model
    from compdiff.expr import parse
    from compdiff.lift import expression_concepts, lift
    from compdiff.select import margins, signs

    expr = parse(args.expr)
    expr.clauses()  # NOT of an OR etc.: exit 2 before any image or model is read
    concepts = list(expression_concepts(expr))
    if not concepts:
        raise UsageError("the expression has no concept with a non-zero weight: nothing to score")
    times = _times(args.times)
    images = [read_image(p) for p in args.images]
    model = open_model(args.model, device=pick_device(args.device), dtype=args.dtype)
    for path, image in zip(args.images, images):
        _check_size(path, image, model)
    sign = signs(expr, concepts)
    evals, grid = 0, None
    order = sorted(range(len(images)), key=lambda i: tuple(images[i].shape))  # equal sizes batch together
    results: dict[int, dict] = {}
    for lo in range(0, len(order), args.batch_size):
        for group in _same_shape_runs(order[lo:lo + args.batch_size], images):
            batch = torch.stack([images[i] for i in group])
            got = lift(model, batch, expr, times=times, draws=args.draws, seeds=[args.seed + i for i in group],
                       weighting=args.weighting, max_batch=args.max_batch)
            evals, grid = evals + got.model_evals, got.times
            marg = margins(got.scores, sign)
            for b, i in enumerate(group):
                results[i] = {"file": args.images[i], "seed": args.seed + i,
                              "lift": dict(zip(concepts, got.scores[b].tolist())),
                              "stderr": dict(zip(concepts, [None if math.isnan(v) else v
                                                            for v in got.stderr[b].tolist()])),
                              "margin": float(marg[b]), "holds": bool(marg[b] > 0)}
    rows = [results[i] for i in range(len(images))]
    return {"model": str(args.model), "family": model.family, "expression": str(expr), "concepts": concepts,
            "weighting": args.weighting, "times": grid.tolist(), "draws": args.draws, "seed": args.seed,
            "model_evals": evals, "images": rows}


def _same_shape_runs(indices: list[int], images: list) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and images[runs[-1][-1]].shape == images[i].shape:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def table(result: dict) -> list[str]:
    """The result as text lines: one row per image, one column per concept, then whether EXPR holds."""
    from compdiff.expr import quote
    from compdiff.expr.display import excerpt

    heads = ["image"] + [excerpt(quote(c), 30) for c in result["concepts"]] + ["holds"]
    body = [[excerpt(r["file"], 60)] + [f"{r['lift'][c]:+.3f}" for c in result["concepts"]]
            + ["yes" if r["holds"] else "no"] for r in result["images"]]
    widths = [max(len(row[k]) for row in [heads] + body) for k in range(len(heads))]
    fmt = lambda row: "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    n_t = len(result["times"])
    return ([f"expression: {result['expression']}", fmt(heads)] + [fmt(row) for row in body]
            + [f"lift in nats ({result['weighting']} weighting, {n_t} times x {result['draws']} draw(s), image i seeded "
               f"{result['seed']} + i); {result['model_evals']} model evaluations"])


def run(args: argparse.Namespace) -> int:
    result = score_images(args)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print("\n".join(table(result)))
    return 0
