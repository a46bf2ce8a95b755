"""compdiff sample: compose an expression with a model and write a PNG grid, or one PNG per image.

Images are sampled --batch-size at a time (image i always uses seed + i: its noise and, with
OR, its clause come from its own generator, so the images do not depend on the batch size)
and written as they are made, so memory is bounded whatever --n is. Everything that can be
checked is checked before the model is opened: option ranges (while parsing), the output
path, the expression and its weights.

``--select lift|cached-lift --candidates M`` draws M candidates per image and keeps the best by the
model's own lift scores (compdiff.generate; seeds: compdiff.select.candidate_seed). Each kept image's
seed and lift table are written beside it as JSON (:func:`sidecar_name`; the grid: one JSON beside it).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path

import torch

from compdiff.progress import progress_bar
from compdiff.cli import add_precision_options, float_in, int_in
from compdiff.correctors import KERNELS, Corrector
from compdiff.atomic import output_problem, write_json, write_png
from compdiff.generate import DEFAULT_CANDIDATES, MAX_CANDIDATES, SELECTS
from compdiff.sampling import SAMPLERS
from compdiff.world.tasks import task_help, task_names

DEFAULT_CORRECTOR = Corrector("ula")  # its fields are the CLI defaults of the corrector options

#: option limits (checked while the arguments are parsed; also in --help)
MAX_N = 1_000_000
MAX_GRID = 64  # --out: one grid holds at most this many images; more go to --out-dir
MAX_BATCH_SIZE = 1024
DEFAULT_BATCH_SIZE = 16
MAX_STEPS = 1000
MAX_SCALE = 100.0
MAX_SEED = 2**63 - 1
MAX_CORRECTOR_STEPS = 100
MAX_CORRECTOR_STEP_SIZE = 100.0
MAX_ROWS = 1_000_000  # --max-batch
SEED_FORMULA = ("candidate j of image i uses seed s + i for j = 0 (so --candidates 1 is plain sampling) and "
                "splitmix64((s + i)·2^32 + j) mod 2^63 for j >= 1 (compdiff.select.candidate_seed), s = --seed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="compose concepts and write a PNG grid (the main job)",
        description=textwrap.fill(
            "Compose EXPR (concepts joined by AND, NOT, OR, weights and parentheses) with a model "
            f"and write a grid of --n images (at most {MAX_GRID}) to --out, or one PNG per image to --out-dir "
            "(any --n). Images are sampled --batch-size at a time, so memory does not grow with --n; image i "
            "uses seed + i whatever the batch size. By default the model shipped for --task is used; "
            "--model takes a directory written by 'compdiff train' or a local diffusers pipeline.", 79),
        epilog="""examples:
  compdiff sample '"0.25,0.5" AND "0.75,0.5" AND NOT "0.5,0.8"' --n 8 --out composed.png
  compdiff sample 'red AND cube AND NOT metal' --task attributes
  compdiff sample '"0.3,0.5" OR "0.7,0.5"' --n 5000 --out-dir samples/
  compdiff sample --model /path/to/sd 'a castle AND NOT "black and white"' --steps 30 --guidance-scale 7.5
  compdiff sample 'red AND cube AND NOT metal' --task attributes --select lift --candidates 4 --out-dir kept/

selection (--select): each requested image draws --candidates M candidates and keeps the one whose
lift scores (the model's own estimate of log p(x|c) - log p(x), per term) best satisfy the expression:
every positive term's lift > 0 and every NOT term's < 0, ranked by the smallest margin (the first
candidate among ties; exactly --n images come back, satisfying or not). Seeds: """ + SEED_FORMULA + """.
The JSON beside each kept image (--out-dir: INDEX_seedSEED.json beside INDEX_seedSEED.png; --out
FILE.png: FILE.json for the whole grid) gives its kept seed, candidate, lift table, margin and
whether it satisfies the rule. 'lift' re-noises each final sample (10 times, 1 draw: the cost of 10
more steps per candidate); 'cached-lift' reads the sampler's own predictions (no extra model call).""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog += "\n\nworld tasks (--task):\n" + task_help()
    p.add_argument("expr", metavar="EXPR", help="the expression, e.g. '\"0.3,0.5\" AND NOT \"0.7,0.5\"'")
    p.add_argument("--task", default="objects",
                   help="the shipped model of this world task (default objects): " + " | ".join(task_names()))
    p.add_argument("--model", help="a model directory of any family compdiff opens (a 'compdiff train' output or a "
                   "local diffusers pipeline) or a shipped model's name; overrides --task")
    p.add_argument("--n", type=int_in(1, MAX_N), default=8,
                   help=f"number of images, 1..{MAX_N} (default 8; more than {MAX_GRID} need --out-dir)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE,
                   help=f"images sampled at a time, 1..{MAX_BATCH_SIZE} (default {DEFAULT_BATCH_SIZE}); "
                   "the images do not depend on it, peak memory does")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="default: the model's recommendation (its compdiff.json 'sampling'), else ddim")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None,
                   help=f"sampling steps, 1..{MAX_STEPS} (default: the model's recommendation, else 50)")
    p.add_argument("--spacing", choices=["trailing", "leading", "linspace"], default=None,
                   help="timestep spacing (default trailing: the first step starts at pure noise; SD3 and Flux: "
                        "their pipeline's own)")
    p.add_argument("--scheduler", metavar="NAME|pipeline", default=None,
                   help="diffusers pipelines: sample with a diffusers scheduler instead of --sampler: 'pipeline' = "
                        "the folder's own scheduler config, or a class name such as EulerDiscreteScheduler, "
                        "DPMSolverMultistepScheduler, UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler "
                        "(built from the folder's scheduler config)")
    p.add_argument("--distilled-guidance", type=float_in(0, MAX_SCALE), default=None,
                   help="Flux dev: the distilled guidance every prediction is taken at (default 3.5; see "
                        "docs/pipelines.md)")
    p.add_argument("--eta", type=float_in(0, 1), default=0.0,
                   help="DDIM eta in [0, 1] (default 0: deterministic); ddim only")
    p.add_argument("--guidance-scale", type=float_in(-MAX_SCALE, MAX_SCALE), default=None,
                   help="s in eps(∅) + Σ w·s·(eps(c) − eps(∅)), |s| <= 100 "
                   "(default: 3 for world models, 7.5 for diffusers pipelines)")
    p.add_argument("--mode", choices=["sum", "mean"], default="sum",
                   help="sum: the paper's rule; mean: divide by the number of positive terms")
    p.add_argument("--rescale", type=float_in(0, 1), default=0.0, help="guidance rescale phi in [0, 1] (default 0)")
    p.add_argument("--negation", choices=["plain", "perp"], default="plain",
                   help="perp: project each NOT term off the summed positive guidance, per sample (Perp-Neg)")
    add_corrector_options(p)
    p.add_argument("--mask", action="append", default=[], metavar="NAME=FILE",
                   help="a mask image for the region mask:NAME (grey: white = inside, black = outside; any size, "
                   "resized to the model's grid); repeat for several masks")
    p.add_argument("--feather", type=float_in(0, 1), default=0.0, metavar="F",
                   help="width of a region's soft edge, as a fraction of the image (default 0: hard edges, "
                   "nothing leaks outside a region)")
    p.add_argument("--region-mode", choices=["sum", "normalize"], default="sum",
                   help="where regions overlap: sum (default: every region's concept guides there) or normalize "
                   "(positive regional terms share the guidance: their masks divided by their sum where it exceeds 1)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                   help="image i uses seed + i, 0 <= seed + i < 2**63 (default 0)")
    p.add_argument("--select", choices=list(SELECTS), default=None,
                   help="draw --candidates per image and keep the best by the model's own lift scores: 'lift' "
                   "(fresh noisings of each final sample) or 'cached-lift' (the sampling trajectory, no extra "
                   "model evaluation); writes each kept image's seed and lift table as JSON beside it")
    p.add_argument("--candidates", type=int_in(1, MAX_CANDIDATES), default=None, metavar="M",
                   help=f"candidates per image with --select, 1..{MAX_CANDIDATES} (default {DEFAULT_CANDIDATES}); "
                   + SEED_FORMULA + "; a batch samples --batch-size x M candidates")
    p.add_argument("--max-batch", type=int_in(1, MAX_ROWS), default=None,
                   help="cap on rows per model call (>= 1; a batch sends batch-size x (concepts + 1) rows)")
    add_precision_options(p)
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="diffusers pipelines' weights (auto: float16 on a GPU, float32 on the CPU)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="diffusers pipelines on a GPU: keep the text encoders, the UNet/transformer and the VAE in "
                        "CPU memory and move each to the GPU only while it runs (accelerate's model offload, as "
                        "diffusers' enable_model_cpu_offload): peak GPU memory is about the largest module plus "
                        "activations; with --max-batch, activations stay those of one chunk whatever the number "
                        "of concepts. Needs a GPU")
    p.add_argument("--out", default=None,
                   help=f"output PNG grid of at most {MAX_GRID} images (default composed.png)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write one PNG per image into DIR instead of a grid, named INDEX_seedSEED.png, each "
                   "written whole or not at all (created if missing; files of the same name are replaced); with "
                   "--select, INDEX_seedSEED.json beside each (SEED: the requested seed + INDEX; the JSON's 'seed' "
                   "is the kept candidate's)")
    p.add_argument("--annotate", action="store_true",
                   help="--out grids: add a header (the expression as asked, the wanted and NOT concepts, the seeds) "
                   "and, for the objects task, a 'what was asked' panel (a ring per AND position, a cross per NOT "
                   "position); the images themselves stay the exact samples (compdiff.world.annotate)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def pick_device(name: str) -> torch.device:
    """--device: auto, cpu, cuda or cuda:N (compdiff.devices, shared with the web app's serve)."""
    from compdiff.devices import pick_device as pick

    return pick(name)


def add_corrector_options(p: argparse.ArgumentParser) -> None:
    """--correct and its options; read back with :func:`corrector_from`. The ranges are the ones
    ``Corrector`` accepts (plus upper bounds on the work: steps, step size)."""
    d = DEFAULT_CORRECTOR
    p.add_argument("--correct", choices=sorted(KERNELS), default=None,
                   help="MCMC corrector steps at each noise level (see docs/operators.md); default off")
    p.add_argument("--corrector-steps", type=int_in(1, MAX_CORRECTOR_STEPS), default=d.steps,
                   help=f"steps per corrected level, 1..{MAX_CORRECTOR_STEPS} (default {d.steps})")
    p.add_argument("--corrector-step-size", type=float_in(0, MAX_CORRECTOR_STEP_SIZE, lo_open=True),
                   default=d.step_size,
                   help=f"C in h_t = C·sigma_t², in (0, {MAX_CORRECTOR_STEP_SIZE:g}] (default {d.step_size})")
    p.add_argument("--correct-range", type=float_in(0, 1), nargs=2, metavar=("LO", "HI"), default=d.range,
                   help="fraction of the run's levels to correct, 0 = noisiest; 0 <= LO < HI <= 1 "
                   f"(default {d.range[0]} {d.range[1]})")
    p.add_argument("--corrector-damping", type=float_in(0, 1, hi_open=True), default=d.damping,
                   help=f"U-HMC momentum persistence in [0, 1) (default {d.damping})")


def corrector_from(args: argparse.Namespace) -> Corrector | None:
    """The Corrector the options ask for, or None without --correct. The options are checked
    either way (UsageError naming the flag), so a bad value never waits for --correct."""
    from compdiff.cli import UsageError
    from compdiff.errors import InputError

    lo, hi = args.correct_range
    if not lo < hi:
        raise UsageError(f"--correct-range LO HI needs LO < HI, got {lo:g} {hi:g}")
    try:
        corrector = Corrector(args.correct or DEFAULT_CORRECTOR.kind, steps=args.corrector_steps,
                              step_size=args.corrector_step_size, range=(lo, hi), damping=args.corrector_damping)
    except InputError as err:
        raise UsageError(f"--correct/--corrector-*: {err}") from None
    return corrector if args.correct is not None else None


def sampler_kwargs(name: str, eta: float) -> dict:
    """The options passed to sampler ``name``: eta where it takes one; a non-zero eta elsewhere is an error."""
    from compdiff.cli import UsageError
    from compdiff.sampling import sampler_options

    if "eta" in sampler_options(name):
        return {"eta": eta}
    if eta != 0:
        takers = ", ".join(n for n in SAMPLERS if "eta" in sampler_options(n))
        raise UsageError(f"--eta applies to {takers}, not to the sampler {name!r}")
    return {}


def image_name(index: int, seed: int, n: int) -> str:
    """--out-dir file of image ``index`` (seed ``seed``) of ``n``: ``00017_seed17.png``."""
    return f"{index:0{max(5, len(str(n - 1)))}d}_seed{seed}.png"


def sidecar_name(png: str | Path) -> Path:
    """The JSON written beside a PNG with --select: the same name with .json (``00017_seed17.json``,
    ``composed.json``)."""
    return Path(png).with_suffix(".json")


def check_outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(grid file, image folder), exactly one set; UsageError for a path that cannot be written
    (checked before any work: nothing is created here)."""
    from compdiff.cli import UsageError
    from compdiff.expr.display import excerpt

    if args.out is not None and args.out_dir is not None:
        raise UsageError("--out (a grid) and --out-dir (one PNG per image) exclude each other")
    if args.out_dir is not None:
        problem = output_problem(args.out_dir, directory=True)
        if problem:
            raise UsageError(f"--out-dir {excerpt(args.out_dir, 80)}: {problem}")
        return None, Path(args.out_dir)
    out = args.out if args.out is not None else "composed.png"
    if args.n > MAX_GRID:
        raise UsageError(f"--n {args.n} is more than a grid holds ({MAX_GRID} images); use --out-dir DIR "
                         "to write one PNG per image")
    if not out.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got '{excerpt(out, 80)}'")
    problem = output_problem(out)
    if problem:
        raise UsageError(f"--out {excerpt(out, 80)}: {problem}")
    if getattr(args, "select", None) is not None:
        problem = output_problem(sidecar_name(out))
        if problem:
            raise UsageError(f"--out {excerpt(out, 80)}: its selection record {sidecar_name(out).name}: {problem}")
    return Path(out), None


def run(args: argparse.Namespace) -> int:
    """Check everything, open the model, then :func:`compdiff.generate.prepare` and its batches."""
    from compdiff.backends import open_model
    from compdiff.cli import UsageError, apply_precision, requested_precision
    from compdiff.expr import parse
    from compdiff.expr.display import excerpt
    from compdiff.generate import prepare

    if args.seed + args.n - 1 > MAX_SEED:
        raise UsageError(f"--seed {args.seed} with --n {args.n}: image i uses seed + i, which must stay "
                         f"below 2**63")
    if args.candidates is not None and args.select is None:
        raise UsageError("--candidates needs --select lift or --select cached-lift")
    candidates = (DEFAULT_CANDIDATES if args.candidates is None else args.candidates) if args.select else 1
    out, out_dir = check_outputs(args)
    if getattr(args, "annotate", False) and out_dir is not None:
        raise UsageError("--annotate draws on the --out grid; --out-dir writes each image plain (drop one of them)")
    corrector = corrector_from(args)
    masks = read_masks(args.mask)
    expr = parse(args.expr, masks=masks)  # bad expressions (and a missing mask) fail before any model is loaded
    unused = sorted(set(masks) - {t.region.name for t in _all_terms(expr) if t.region and t.region.kind == "mask"})
    if unused:
        raise UsageError(f"--mask {excerpt(unused[0], 40)}=...: the expression has no region mask:{excerpt(unused[0], 40)}")
    clauses = expr.clauses()  # NOT of an OR, bad mixture weights: InputError, before the model too
    _check_effective(clauses, 1.0 if args.guidance_scale is None else args.guidance_scale, args.mode)
    if args.sampler is not None:
        sampler_kwargs(args.sampler, args.eta)  # --eta for a sampler without one: before the model is opened
    device = pick_device(args.device)
    if args.cpu_offload and device.type == "cpu":
        why = "torch sees no CUDA GPU here" if args.device == "auto" else f"--device {args.device}"
        raise UsageError(f"--cpu-offload needs a GPU (an accelerator device): it keeps the weights in CPU memory and "
                         f"moves each module to the GPU while it runs, but the device is cpu ({why}); drop "
                         "--cpu-offload to run on the CPU")
    precision = requested_precision(args)
    from compdiff.models import shipped_models

    shipped = shipped_models()
    if args.model is None and args.task not in shipped:
        raise UsageError(f"--task {args.task} has no shipped model (shipped: {', '.join(shipped)}): pass "
                         f"--model DIR, a model trained with 'compdiff train --task {args.task}'")
    m = open_model(args.model or args.task, device=device, dtype=args.dtype, cpu_offload=args.cpu_offload)
    said = apply_precision([m], precision, rows=min(args.n, args.batch_size or args.n) * (max(len(c.terms) for c in clauses) + 1))
    if said:
        print(f"compdiff sample: {said}", file=sys.stderr, flush=True)
    if args.distilled_guidance is not None:
        if not hasattr(m.denoiser, "distilled_guidance"):
            raise UsageError(f"--distilled-guidance applies to guidance-distilled Flux models, not {m.family}")
        m.denoiser.distilled_guidance = args.distilled_guidance
    bar = progress_bar(args.n, "sampling", "image", disable=args.no_progress,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    run = prepare(m, expr, sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                  guidance_scale=args.guidance_scale, corrector=corrector, negation=args.negation, mode=args.mode,
                  rescale=args.rescale, eta=args.eta, masks=masks, feather=args.feather,
                  region_mode=args.region_mode, scheduler=args.scheduler, max_batch=args.max_batch,
                  callback=lambda info: bar.update(info.x.shape[0] / (info.num_steps * candidates)),
                  select=args.select, candidates=candidates if args.select else None)
    _describe(m, device, expr, run, args)
    seeds = range(args.seed, args.seed + args.n)
    bar.set_postfix_str(f"0/{args.n} images", refresh=False)
    tiles = []  # the grid's images, uint8 (at most MAX_GRID)
    records = []  # with --select, the grid's selection records
    done = 0
    for batch in run.batches(seeds, args.batch_size):
        images = batch.uint8().permute(0, 2, 3, 1).numpy()
        if out_dir is not None:
            from PIL import Image

            for j, seed in enumerate(batch.seeds):
                png = out_dir / image_name(done + j, seed, args.n)
                write_png(Image.fromarray(images[j]), png)
                if args.select:
                    write_json(sidecar_name(png), {**_header(m, expr), "index": done + j, "file": png.name,
                                                   **batch.record(j)})
        else:
            tiles.append(images)
            records += [{"index": done + j, **batch.record(j)} for j in range(len(batch.seeds))] if args.select \
                else []
        done += len(batch.seeds)
        bar.set_postfix_str(f"{done}/{args.n} images", refresh=False)
        bar.update(done - bar.n)  # the steps' fractions, made whole
    bar.close()
    if out_dir is not None:
        print(f"wrote {args.n} images to {out_dir}{os.sep}")
    else:
        import numpy as np

        if getattr(args, "annotate", False):  # the same columns as the plain grid (and its JSON)
            from compdiff.world.annotate import tile_labels, write_annotated

            how = f"model {Path(m.name).name}, {run.plan.sampler or 'its scheduler'}, {run.plan.steps} steps"
            write_annotated(np.concatenate(tiles), out, args.expr, clauses=clauses, task=m.task,
                            labels=tile_labels(seeds, records), source=how, columns=min(8, args.n))
        else:
            write_grid_uint8(np.concatenate(tiles), out)
        if args.select:
            write_json(sidecar_name(out), {**_header(m, expr), "file": out.name, "columns": min(8, args.n),
                                           "images": records})
        print(f"wrote {out} ({args.n} images)" + (f" and {sidecar_name(out)}" if args.select else ""))
    return 0


def _header(m, expr) -> dict:  # noqa: ANN001
    """What every selection record starts with: the model, the expression and the seed rule."""
    return {"model": m.name, "expression": str(expr), "seed_rule": SEED_FORMULA}


def _describe(m, device: torch.device, expr, run, args: argparse.Namespace) -> None:  # noqa: ANN001
    """The model, the expression and each clause's effective weights, and how it is sampled."""
    fn = run.fn
    print(f"model: {m.name} ({m.family}, {device})")
    print(f"expression: {expr}")
    for i, clause in enumerate(fn.clauses):
        if len(fn.clauses) > 1:
            print(f"  clause {i + 1} (pi = {clause.weight:.3f}):")
        for (k, region), w in zip(fn.slots, fn.weight_matrix[i].tolist()):
            if w:
                print(f"  {w:+8.3f}  {fn.concepts[k]}" + ("" if region is None else f"  @ {region}"))
    p = run.plan
    how = f"scheduler: {type(p.scheduler).__name__}" if p.scheduler is not None else f"sampler: {p.sampler}"
    print(f"{how}, {p.steps} steps, {args.n} images, {min(args.batch_size, args.n)} at a time")
    if run.selecting is not None:
        sel = run.selecting
        print(f"selection: {sel.how}, {sel.candidates} candidates per image (the best by the lift keep rule)")


def read_masks(specs: list[str]) -> dict[str, torch.Tensor]:
    """``--mask NAME=FILE`` options -> {NAME: (H, W) float mask}; UsageError for a malformed option,
    a repeated name, a bad name or a file that is not an image."""
    from compdiff.cli import UsageError
    from compdiff.errors import InputError
    from compdiff.expr.display import excerpt
    from compdiff.expr.region import MASK_NAME
    from compdiff.regions import load_mask

    masks: dict[str, torch.Tensor] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise UsageError(f"--mask {excerpt(spec, 80)}: write NAME=FILE, e.g. --mask face=face.png")
        if not MASK_NAME.fullmatch(name):
            raise UsageError(f"--mask {excerpt(spec, 80)}: a mask name is 1-64 letters, digits, '_', '.' or '-'")
        if name in masks:
            raise UsageError(f"--mask {excerpt(name, 40)} is given twice")
        try:
            masks[name] = load_mask(path)
        except InputError as err:
            raise UsageError(f"--mask {excerpt(spec, 80)}: {err}") from None
    return masks


def _all_terms(expr) -> list:  # noqa: ANN001
    return [t for clause in expr.clauses() for t in clause.terms]


def _check_effective(clauses: list, scale: float, mode: str) -> None:
    """UsageError when a clause's effective weight (k·w·s) is not finite."""
    from compdiff.cli import UsageError
    from compdiff.compose import effective_weights

    for clause in clauses:
        eff = effective_weights(list(clause.terms), scale, mode)
        if not all(math.isfinite(e) for e in eff):
            raise UsageError(f"the effective weights (weight x --guidance-scale {scale:g}) overflow; "
                             "use smaller weights")


def to_uint8(images: torch.Tensor):
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 numpy, on the CPU (compdiff.generate.to_uint8)."""
    from compdiff.generate import to_uint8 as quantise

    return quantise(images).permute(0, 2, 3, 1).numpy()


def write_grid(images: torch.Tensor, out: str, columns: int = 8, min_cell: int = 128) -> None:
    """images (N, 3, H, W) in [-1, 1] -> a PNG grid, nearest-upscaled to >= min_cell pixels, atomically."""
    write_grid_uint8(to_uint8(images), out, columns, min_cell)


def write_grid_uint8(u8, out: str | Path, columns: int = 8, min_cell: int = 128) -> None:
    """images (N, H, W, 3) uint8 -> a PNG grid, nearest-upscaled to >= min_cell pixels, atomically."""
    from PIL import Image

    n, h, w, _ = u8.shape
    k = max(1, min_cell // h)
    cols = min(columns, n)
    rows = -(-n // cols)
    pad = 2
    grid = Image.new("RGB", (cols * (w * k + pad) + pad, rows * (h * k + pad) + pad), (255, 255, 255))
    for i in range(n):
        tile = Image.fromarray(u8[i]).resize((w * k, h * k), Image.NEAREST)
        grid.paste(tile, (pad + (i % cols) * (w * k + pad), pad + (i // cols) * (h * k + pad)))
    write_png(grid, out)
