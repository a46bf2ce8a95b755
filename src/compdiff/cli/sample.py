"""compdiff sample: compose an expression with a model and write a PNG grid."""
from __future__ import annotations

import argparse

import torch

from compdiff.cli.progress import progress_bar
from compdiff.correctors import KERNELS, Corrector
from compdiff.atomic import write_png
from compdiff.sampling import SAMPLERS
from compdiff.world.tasks import task_help, task_names

DEFAULT_CORRECTOR = Corrector("ula")  # its fields are the CLI defaults of the corrector options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="compose concepts and write a PNG grid (the main job)",
        description="Compose EXPR (concepts joined by AND, NOT, weights and parentheses) with a model "
        "and write a grid of --n images. By default the model shipped for --task is used; "
        "--model takes a directory written by 'compdiff train' or a local diffusers pipeline.",
        epilog="""examples:
  compdiff sample '"0.25,0.5" AND "0.75,0.5" AND NOT "0.5,0.8"' --n 8 --out composed.png
  compdiff sample 'red AND cube AND NOT metal' --task attributes
  compdiff sample --model /path/to/sd 'a castle AND NOT "black and white"' --steps 30 --guidance-scale 7.5""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog += "\n\nworld tasks (--task):\n" + task_help()
    p.add_argument("expr", metavar="EXPR", help="the expression, e.g. '\"0.3,0.5\" AND NOT \"0.7,0.5\"'")
    p.add_argument("--task", default="objects",
                   help="the shipped model of this world task (default objects): " + " | ".join(task_names()))
    p.add_argument("--model", help="a model directory of any family compdiff opens (a 'compdiff train' output or a "
                   "local diffusers pipeline) or a shipped model's name; overrides --task")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="default: the model's recommendation (its compdiff.json 'sampling'), else ddim")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's recommendation, else 50)")
    p.add_argument("--spacing", choices=["trailing", "leading", "linspace"], default="trailing",
                   help="timestep spacing (default trailing: the first step starts at pure noise)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0: deterministic); ddim only")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="s in eps(∅) + Σ w·s·(eps(c) − eps(∅)) (default: 3 for world models, 7.5 for diffusers pipelines)")
    p.add_argument("--mode", choices=["sum", "mean"], default="sum",
                   help="sum: the paper's rule; mean: divide by the number of positive terms")
    p.add_argument("--rescale", type=float, default=0.0, help="guidance rescale phi in [0, 1] (default 0)")
    p.add_argument("--negation", choices=["plain", "perp"], default="plain",
                   help="perp: project each NOT term off the summed positive guidance, per sample (Perp-Neg)")
    add_corrector_options(p)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--max-batch", type=int, default=None, help="cap on rows per model call")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the model (world models)")
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="diffusers pipelines' weights (auto: float16 on a GPU, float32 on the CPU)")
    p.add_argument("--out", default="composed.png", help="output PNG (default composed.png)")
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
    """--correct and its options (shared by sample and eval); read back with :func:`corrector_from`."""
    d = DEFAULT_CORRECTOR
    p.add_argument("--correct", choices=sorted(KERNELS), default=None,
                   help="MCMC corrector steps at each noise level (see docs/operators.md); default off")
    p.add_argument("--corrector-steps", type=int, default=d.steps, help=f"steps per corrected level (default {d.steps})")
    p.add_argument("--corrector-step-size", type=float, default=d.step_size,
                   help=f"C in h_t = C·sigma_t² (default {d.step_size})")
    p.add_argument("--correct-range", type=float, nargs=2, metavar=("LO", "HI"), default=d.range,
                   help=f"fraction of the run's levels to correct, 0 = noisiest (default {d.range[0]} {d.range[1]})")
    p.add_argument("--corrector-damping", type=float, default=d.damping,
                   help=f"U-HMC momentum persistence (default {d.damping})")


def corrector_from(args: argparse.Namespace) -> Corrector | None:
    """The Corrector the options ask for (InputError for bad values), or None without --correct."""
    if args.correct is None:
        return None
    return Corrector(args.correct, steps=args.corrector_steps, step_size=args.corrector_step_size,
                     range=tuple(args.correct_range), damping=args.corrector_damping)


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


def run(args: argparse.Namespace) -> int:
    from compdiff.backends import open_model
    from compdiff.cli import UsageError
    from compdiff.compose import compose
    from compdiff.expr import parse
    from compdiff.sampling import generators, get_sampler, randn

    if args.n < 1 or (args.steps is not None and args.steps < 1):
        raise UsageError("--n and --steps must be >= 1")
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {args.out!r}")
    expr = parse(args.expr)  # bad expressions fail before any model is loaded
    corrector = corrector_from(args)
    device = pick_device(args.device)
    m = open_model(args.model or args.task, device=device, dtype=args.dtype, bf16=args.bf16)
    scale = m.default_scale if args.guidance_scale is None else args.guidance_scale
    sampler = args.sampler or m.sampling.get("sampler", "ddim")
    steps = args.steps or int(m.sampling.get("steps", 50))
    options = sampler_kwargs(sampler, args.eta)
    eps_fn = compose(m.denoiser, m.encoder, expr, guidance_scale=scale, mode=args.mode, rescale=args.rescale,
                     max_batch=args.max_batch, negation=args.negation)
    print(f"model: {m.name} ({m.family}, {device})")
    print(f"expression: {expr}")
    for i, clause in enumerate(eps_fn.clauses):
        if len(eps_fn.clauses) > 1:
            print(f"  clause {i + 1} (pi = {clause.weight:.3f}):")
        for concept, w in zip(eps_fn.concepts, eps_fn.weight_matrix[i].tolist()):
            if w:
                print(f"  {w:+8.3f}  {concept}")
    gens = generators([args.seed + i for i in range(args.n)])
    eps_fn = eps_fn.with_clauses(eps_fn.draw_clauses(args.n, gens))  # OR: each image draws its clause
    x_T = randn((args.n, *m.latent_shape), gens, device=device)
    try:
        ts = m.schedule.timesteps(steps, args.spacing)
    except ValueError as err:
        raise UsageError(f"--steps/--spacing: {err}") from None
    print(f"sampler: {sampler}, {steps} steps")
    bar = progress_bar(len(ts), "sampling", "step", disable=args.no_progress)
    x0 = get_sampler(sampler)(eps_fn, x_T, m.schedule, ts, generator=gens, callback=lambda info: bar.update(1),
                              clip_x0=m.clip_x0, corrector=corrector, **options)
    bar.close()
    write_grid(m.decode(x0).float().cpu(), args.out)
    print(f"wrote {args.out} ({args.n} images)")
    return 0


def write_grid(images: torch.Tensor, out: str, columns: int = 8, min_cell: int = 128) -> None:
    """images (N, 3, H, W) in [-1, 1] -> a PNG grid, nearest-upscaled to >= min_cell pixels, atomically."""
    from PIL import Image

    n, _, h, w = images.shape
    k = max(1, min_cell // h)
    cols = min(columns, n)
    rows = -(-n // cols)
    u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pad = 2
    grid = Image.new("RGB", (cols * (w * k + pad) + pad, rows * (h * k + pad) + pad), (255, 255, 255))
    for i in range(n):
        tile = Image.fromarray(u8[i]).resize((w * k, h * k), Image.NEAREST)
        grid.paste(tile, (pad + (i % cols) * (w * k + pad), pad + (i // cols) * (h * k + pad)))
    write_png(grid, out)
