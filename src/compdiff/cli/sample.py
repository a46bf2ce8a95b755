"""compdiff sample: compose an expression with a model and write a PNG grid, or one PNG per image.

Images are sampled --batch-size at a time (image i always uses seed + i: its noise and, with
OR, its clause come from its own generator, so the images do not depend on the batch size)
and written as they are made, so memory is bounded whatever --n is. Everything that can be
checked is checked before the model is opened: option ranges (while parsing), the output
path, the expression and its weights.
"""
from __future__ import annotations

import argparse
import math
import os
import textwrap
from typing import Callable, NamedTuple
from pathlib import Path

import torch

from compdiff.progress import progress_bar
from compdiff.cli import float_in, int_in
from compdiff.correctors import KERNELS, Corrector
from compdiff.atomic import output_problem, write_png
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
  compdiff sample --model /path/to/sd 'a castle AND NOT "black and white"' --steps 30 --guidance-scale 7.5""",
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
    p.add_argument("--max-batch", type=int_in(1, MAX_ROWS), default=None,
                   help="cap on rows per model call (>= 1; a batch sends batch-size x (concepts + 1) rows)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the model (world models; on CPUs without native bf16 convolutions run 50-90x slower under it: bench/bf16_conv.py)")
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
                   "written whole or not at all (created if missing; files of the same name are replaced)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def pick_device(name: str) -> torch.device:
    """--device: auto, cpu, cuda or cuda:N; a GPU that torch cannot see is a usage error."""
    from compdiff.cli import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: compdiff sample runs on cpu or cuda")
    return device


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
    return Path(out), None


def run(args: argparse.Namespace) -> int:
    from compdiff.backends import open_model
    from compdiff.cli import UsageError
    from compdiff.compose import compose
    from compdiff.expr import parse
    from compdiff.backends.one_call import seeded_start
    from compdiff.sampling import get_sampler

    if args.seed + args.n - 1 > MAX_SEED:
        raise UsageError(f"--seed {args.seed} with --n {args.n}: image i uses seed + i, which must stay "
                         f"below 2**63")
    out, out_dir = check_outputs(args)
    corrector = corrector_from(args)
    from compdiff.expr.display import excerpt

    masks = read_masks(args.mask)
    expr = parse(args.expr, masks=masks)  # bad expressions (and a missing mask) fail before any model is loaded
    unused = sorted(set(masks) - {t.region.name for t in _all_terms(expr) if t.region and t.region.kind == "mask"})
    if unused:
        raise UsageError(f"--mask {excerpt(unused[0], 40)}=...: the expression has no region mask:{excerpt(unused[0], 40)}")
    clauses = expr.clauses()  # NOT of an OR, bad mixture weights: InputError, before the model too
    _check_effective(clauses, 1.0 if args.guidance_scale is None else args.guidance_scale, args.mode)
    device = pick_device(args.device)
    if args.cpu_offload and device.type == "cpu":
        why = "torch sees no CUDA GPU here" if args.device == "auto" else f"--device {args.device}"
        raise UsageError(f"--cpu-offload needs a GPU (an accelerator device): it keeps the weights in CPU memory and "
                         f"moves each module to the GPU while it runs, but the device is cpu ({why}); drop "
                         "--cpu-offload to run on the CPU")
    m = open_model(args.model or args.task, device=device, dtype=args.dtype, bf16=args.bf16,
                   cpu_offload=args.cpu_offload)
    scale = m.default_scale if args.guidance_scale is None else args.guidance_scale
    run_scheduler = _scheduler_run(args, m)
    if args.distilled_guidance is not None:
        if not hasattr(m.denoiser, "distilled_guidance"):
            raise UsageError(f"--distilled-guidance applies to guidance-distilled Flux models, not {m.family}")
        m.denoiser.distilled_guidance = args.distilled_guidance
    sampler = args.sampler or m.sampling.get("sampler", "ddim")
    steps = args.steps or int(m.sampling.get("steps", 50))
    options = sampler_kwargs(sampler, args.eta)
    eps_fn = compose(m.denoiser, m.encoder, expr, guidance_scale=scale, mode=args.mode, rescale=args.rescale,
                     max_batch=args.max_batch, negation=args.negation, masks=masks, feather=args.feather,
                     region_mode=args.region_mode)
    if not bool(torch.isfinite(eps_fn.weight_matrix).all()):
        raise UsageError(f"the effective weights (weight x --guidance-scale {scale:g}) overflow; use smaller weights")
    try:
        spacing = args.spacing or (m.info.get("timestep_spacing", "trailing")
                                   if m.schedule.prediction == "velocity" else "trailing")
        ts = m.schedule.timesteps(steps, spacing)
    except ValueError as err:
        raise UsageError(f"--steps/--spacing: {err}") from None
    print(f"model: {m.name} ({m.family}, {device})")
    print(f"expression: {expr}")
    for i, clause in enumerate(eps_fn.clauses):
        if len(eps_fn.clauses) > 1:
            print(f"  clause {i + 1} (pi = {clause.weight:.3f}):")
        for (k, region), w in zip(eps_fn.slots, eps_fn.weight_matrix[i].tolist()):
            if w:
                print(f"  {w:+8.3f}  {eps_fn.concepts[k]}" + ("" if region is None else f"  @ {region}"))
    how = f"scheduler: {type(run_scheduler.scheduler).__name__}" if run_scheduler else f"sampler: {sampler}"
    print(f"{how}, {steps} steps, {args.n} images, {min(args.batch_size, args.n)} at a time")

    sample_fn = get_sampler(sampler)
    n, seed = args.n, args.seed
    bar = progress_bar(n, "sampling", "image", disable=args.no_progress,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    bar.set_postfix_str(f"0/{n} images", refresh=False)
    tiles = []  # the grid's images, uint8 (at most MAX_GRID)
    for start in range(0, n, args.batch_size):
        b = min(args.batch_size, n - start)
        fn, x_T, gens = seeded_start(eps_fn, m.latent_shape, [seed + start + j for j in range(b)], device)
        tick = lambda info, b=b: bar.update(b / len(ts))  # noqa: E731
        if run_scheduler:
            x0 = run_scheduler.run(fn, x_T, run_scheduler.scheduler, steps, generator=gens, callback=tick, eta=args.eta)
        else:
            x0 = sample_fn(fn, x_T, m.schedule, ts, generator=gens, callback=tick, clip_x0=m.clip_x0,
                           corrector=corrector, **options)
        images = to_uint8(m.decode(x0))
        del x0, x_T, fn
        if out_dir is not None:
            from PIL import Image

            for j in range(b):
                write_png(Image.fromarray(images[j]), out_dir / image_name(start + j, seed + start + j, n))
        else:
            tiles.append(images)
        bar.set_postfix_str(f"{start + b}/{n} images", refresh=False)
        bar.update(start + b - bar.n)  # the steps' fractions, made whole
    bar.close()
    if out_dir is not None:
        print(f"wrote {n} images to {out_dir}{os.sep}")
    else:
        import numpy as np

        write_grid_uint8(np.concatenate(tiles), out)
        print(f"wrote {out} ({n} images)")
    return 0


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


class _SchedulerRun(NamedTuple):
    run: Callable  # the model's run_scheduler(fn, x_T, scheduler, steps, generator=, callback=, eta=)
    scheduler: object  # the diffusers scheduler it runs


def _scheduler_run(args: argparse.Namespace, m) -> _SchedulerRun | None:  # noqa: ANN001
    """--scheduler: the diffusers scheduler to run (the folder's own, or a class built from its config)."""
    from compdiff.cli import UsageError

    if args.scheduler is None:
        return None
    if "run_scheduler" not in m.info:
        raise UsageError(f"--scheduler applies to diffusers pipelines, not to a {m.family} model; use --sampler")
    if args.correct is not None or args.sampler is not None:
        raise UsageError("--scheduler runs a diffusers scheduler instead of compdiff's samplers: it cannot be "
                         "combined with --sampler or --correct")
    own = m.info["scheduler"]
    if args.scheduler == "pipeline":
        return _SchedulerRun(m.info["run_scheduler"], own)
    import diffusers

    cls = getattr(diffusers, args.scheduler, None)
    if not (isinstance(cls, type) and args.scheduler.endswith("Scheduler") and hasattr(cls, "from_config")):
        raise UsageError(f"--scheduler {args.scheduler!r}: not a diffusers scheduler class (e.g. "
                         "EulerDiscreteScheduler, DPMSolverMultistepScheduler) or 'pipeline'")
    try:
        return _SchedulerRun(m.info["run_scheduler"], cls.from_config(own.config))
    except Exception as err:  # noqa: BLE001 - whatever the scheduler refuses in this config
        raise UsageError(f"--scheduler {args.scheduler}: cannot be built from this pipeline's scheduler config "
                         f"({err})") from None


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
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 numpy, on the CPU."""
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).numpy()


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
