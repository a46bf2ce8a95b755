"""compdiff sample: compose an expression with a model and write a PNG grid."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from compdiff.sampling import CORRECT_RANGE, CORRECTOR_DAMPING, CORRECTOR_STEP_SIZE, CORRECTOR_STEPS

DEFAULT_SCALE = 3.0  # chosen by measurement on the shipped objects model (BENCHMARKS.md)


class Opened(NamedTuple):
    denoiser: object
    encoder: object
    schedule: object
    latent_shape: tuple[int, ...]
    decode: Callable[[torch.Tensor], torch.Tensor]  # samples -> images (N, 3, H, W) in [-1, 1]
    name: str
    default_scale: float
    clip_x0: float | None  # clamp predicted x0 to [-c, c] (world images lie in [-1, 1]; latents are not clipped)
    sampling: dict  # the model's recommended sampler/steps (models.recommended_sampling); {} for pipelines


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
    p.add_argument("expr", metavar="EXPR", help="the expression, e.g. '\"0.3,0.5\" AND NOT \"0.7,0.5\"'")
    p.add_argument("--task", default="objects", help="world task of the shipped model (default objects)")
    p.add_argument("--model", help="model directory (compdiff train output or a local diffusers pipeline)")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default=None,
                   help="default: the model's recommendation (its compdiff.json 'sampling'), else ddim")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's recommendation, else 50)")
    p.add_argument("--spacing", choices=["trailing", "leading", "linspace"], default="trailing",
                   help="timestep spacing (default trailing: the first step starts at pure noise)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0: deterministic)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help=f"s in eps(∅) + Σ w·s·(eps(c) − eps(∅)) (default {DEFAULT_SCALE}; 7.5 for diffusers models)")
    p.add_argument("--mode", choices=["sum", "mean"], default="sum",
                   help="sum: the paper's rule; mean: divide by the number of positive terms")
    p.add_argument("--rescale", type=float, default=0.0, help="guidance rescale phi in [0, 1] (default 0)")
    p.add_argument("--negation", choices=["plain", "perp"], default="plain",
                   help="perp: project each NOT term off the summed positive guidance, per sample (Perp-Neg)")
    p.add_argument("--correct", choices=["ula", "uhmc"], default=None,
                   help="MCMC corrector steps at each noise level (see docs/operators.md); default off")
    p.add_argument("--corrector-steps", type=int, default=CORRECTOR_STEPS)
    p.add_argument("--corrector-step-size", type=float, default=CORRECTOR_STEP_SIZE,
                   help=f"C in h_t = C·sigma_t² (default {CORRECTOR_STEP_SIZE})")
    p.add_argument("--correct-range", type=float, nargs=2, metavar=("LO", "HI"), default=CORRECT_RANGE,
                   help=f"fraction of the run's levels to correct, 0 = noisiest (default {CORRECT_RANGE[0]} {CORRECT_RANGE[1]})")
    p.add_argument("--corrector-damping", type=float, default=CORRECTOR_DAMPING, help="U-HMC momentum persistence")
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


def open_model(model: str | None, task: str, bf16: bool, device: torch.device = torch.device("cpu"),
               dtype: str = "auto") -> Opened:
    from compdiff.cli import UsageError

    if model is not None:
        path = Path(model)
        if not path.exists():
            raise UsageError(f"--model {model!r}: no such directory. compdiff never downloads models: pass a "
                             "local directory (a 'compdiff train' output, or a diffusers pipeline saved with "
                             "save_pretrained / a snapshot folder of the Hugging Face cache)")
        if (path / "model_index.json").is_file():
            from compdiff.backends.diffusers import DiffusersBackend

            if dtype == "auto":
                dtype = "float16" if device.type == "cuda" else "float32"
            b = DiffusersBackend.from_pretrained(path, dtype=getattr(torch, dtype), device=device)
            return Opened(b.denoiser, b.encoder, b.schedule, tuple(b.latent_shape), b.decode, str(path), 7.5, None, {})
    from compdiff.models import load_model, load_pretrained, recommended_sampling, shipped_models

    loaded = load_model(model, bf16=bf16) if model is not None else load_pretrained(task, bf16=bf16)
    loaded.denoiser.net.to(device)
    R = loaded.config.resolution
    sampling = recommended_sampling(model if model is not None else shipped_models()[task])
    return Opened(loaded.denoiser, loaded.encoder, loaded.schedule, (3, R, R), lambda x: x.clamp(-1, 1),
                  model or f"shipped {loaded.config.task} model", DEFAULT_SCALE, 1.0, sampling)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from compdiff.cli import UsageError
    from compdiff.compose import compose
    from compdiff.expr import parse
    from compdiff.sampling import generators, randn, sample_ddim, sample_ddpm

    if args.n < 1 or (args.steps is not None and args.steps < 1):
        raise UsageError("--n and --steps must be >= 1")
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {args.out!r}")
    expr = parse(args.expr)  # bad expressions fail before any model is loaded
    device = pick_device(args.device)
    m = open_model(args.model, args.task, args.bf16, device, args.dtype)
    scale = m.default_scale if args.guidance_scale is None else args.guidance_scale
    sampler = args.sampler or m.sampling.get("sampler", "ddim")
    steps = args.steps or int(m.sampling.get("steps", 50))
    eps_fn = compose(m.denoiser, m.encoder, expr, guidance_scale=scale, mode=args.mode, rescale=args.rescale,
                     max_batch=args.max_batch, negation=args.negation)
    print(f"model: {m.name} ({device})")
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
    mcmc = dict(correct=args.correct, corrector_steps=args.corrector_steps,
                corrector_step_size=args.corrector_step_size, correct_range=tuple(args.correct_range),
                corrector_damping=args.corrector_damping)
    ts = m.schedule.timesteps(steps, args.spacing)
    print(f"sampler: {sampler}, {steps} steps")
    bar = tqdm(total=len(ts), desc="sampling", unit="step", disable=args.no_progress)
    cb = lambda info: bar.update(1)  # noqa: E731
    if sampler == "ddim":
        x0 = sample_ddim(eps_fn, x_T, m.schedule, ts, eta=args.eta, generator=gens, callback=cb, clip_x0=m.clip_x0,
                         **mcmc)
    else:
        x0 = sample_ddpm(eps_fn, x_T, m.schedule, ts, generator=gens, callback=cb, clip_x0=m.clip_x0, **mcmc)
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
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out_path.parent)
    os.close(fd)
    try:
        grid.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the PNG ordinary permissions
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
