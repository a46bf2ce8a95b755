"""compdiff eval: the paper's composition tables on the world, judged by the judge network."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from compdiff.cli import add_precision_options, float_in, int_in
from compdiff.correctors import KERNELS
from compdiff.generate import DEFAULT_CANDIDATES, MAX_CANDIDATES, SELECTS
from compdiff.sampling import SAMPLERS
from compdiff.world.tasks import task_help, task_names

#: option limits, checked while the arguments are parsed (also in --help); K: 1..the task's max_k
MAX_N = 100_000
MAX_STEPS = 1000
MAX_SCALE = 100.0
MAX_CORRECTOR_STEPS = 100
MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 4096
#: the methods --methods accepts; REGION_METHODS confine each concept to its box (tasks with region_center)
METHODS = ("composed", "composed-mean", "composed-regions", "joint", "joint-oracle")
REGION_METHODS = ("composed-regions",)
#: joint-conditioning baselines: "joint" reads the set as tokens only (the paper's baseline);
#: "joint-oracle" also reads a map of every position of the set (objects' bump channel: an oracle layout)
JOINT_METHODS = ("joint", "joint-oracle")

#: what ``compdiff eval`` writes in a report folder (regular expressions a whole name must match; files
#: only), and the temporary files of its atomic writes; results.json (with a compdiff spec) marks a report.
#: Exact names: a grid is grid_<METHOD>_K<k>.png, never any grid_*.png (issue 32: a user's photo).
GRID_FILE = rf"grid_(?:{'|'.join(map(re.escape, METHODS))})_K[1-9][0-9]*\.png"
_TMP = r"\.[a-z0-9_]+\.tmp"  # tempfile.mkstemp's random part (compdiff.atomic.atomic_write)
REPORT_FILES = (r"results\.json", r"table\.md", r"accuracy\.png", GRID_FILE, r"\.results\.json" + _TMP,
                r"\." + GRID_FILE + _TMP, r"\.table\.md" + _TMP, r"\.accuracy\.png" + _TMP)
#: what an evaluation killed before its first results.json leaves: grids and temporary files
EARLY_FILES = (GRID_FILE, r"\.results\.json" + _TMP, r"\." + GRID_FILE + _TMP)
#: the fewest concept sets per K: the Fréchet distance needs two feature rows for a covariance
MIN_N = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="composition accuracy for K = 1, 2, 3, ... concepts (tables, plots, grids)",
        description="Draw n jointly satisfiable concept sets per K from real scenes, generate one image per "
        "set with each method, judge them, and write results.json, table.md, accuracy.png and sample grids. "
        "Re-running the same command resumes: finished cells are not recomputed.",
        epilog="example: compdiff eval --task objects --components 1,2,3,4,5 --n 256 --out reports/objects\n\n"
        "world tasks:\n" + task_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help=" | ".join(task_names()) + f" (shipped models: {_shipped()}; "
                   "other tasks need --model DIR)")
    p.add_argument("--components", default="1,2,3",
                   help="values of K, comma-separated, each 1..the task's largest (objects 5, relations 8, "
                   "attributes 3, described 3) (default 1,2,3)")
    p.add_argument("--n", type=int_in(MIN_N, MAX_N), default=256,
                   help=f"concept sets per K, {MIN_N}..{MAX_N:,} (default 256; the Fréchet distance needs at least "
                   f"{MIN_N} images)")
    p.add_argument("--not", dest="negate", action="store_true",
                   help="add one negated concept to every set (true elsewhere, false in the set's scene)")
    p.add_argument("--sets", choices=["all", "seen", "held-out"], default="all",
                   help="all (default); seen or held-out: only sets that ask for none, or at least one, of the "
                        "combinations a held-out split keeps out of training (see --hold-out)")
    p.add_argument("--hold-out", metavar="NAME", default=None,
                   help="the split --sets refers to (default: the one the composed model was trained with, from "
                        "its compdiff.json)")
    p.add_argument("--model", help="composed model: a directory or a shipped model's name (default: the shipped "
                   "model for --task)")
    p.add_argument("--joint-model", help="joint-conditioning baseline model directory, one that reads the set as "
                   "tokens (adds method 'joint')")
    p.add_argument("--oracle-joint-model", metavar="DIR",
                   help="a joint-conditioning model that also reads a map of every position of the set (objects "
                   "trained without --no-spatial: an oracle layout); adds method 'joint-oracle'")
    p.add_argument("--methods", default=None,
                   help="comma-separated among composed, composed-mean, composed-regions, joint, joint-oracle "
                   "(default: composed,composed-mean, and joint / joint-oracle when their models are given); "
                   "composed-regions (task described) confines each concept to a box around its object, written "
                   "'\"a red cube\" @ (x0, y0, x1, y1)'")
    p.add_argument("--region-size", type=float_in(0, 1, lo_open=True), default=0.4,
                   help="side of each concept's box, a fraction of the image side in (0, 1] (default 0.4): the box "
                   "composed-regions asks for and the in_region score of every method (task described)")
    p.add_argument("--feather", type=float_in(0, 1), default=0.0,
                   help="composed-regions: width of the boxes' soft edge, a fraction of the image side in [0, 1] "
                   "(default 0: hard edges), as compdiff sample --feather")
    p.add_argument("--region-mode", choices=["sum", "normalize"], default="sum",
                   help="composed-regions: where boxes overlap, sum the concepts' guidance (default) or share it "
                   "(normalize), as compdiff sample --region-mode")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="default: the composed model's recommendation (its compdiff.json 'sampling'), else ddim")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None,
                   help=f"sampling steps, 1..{MAX_STEPS} (default: the model's recommendation, else 50)")
    p.add_argument("--spacing", choices=["trailing", "leading", "linspace"], default="trailing",
                   help="timestep spacing (default trailing)")
    p.add_argument("--eta", type=float_in(0, 1), default=0.0, help="DDIM eta in [0, 1] (default 0); ddim only")
    p.add_argument("--guidance-scale", type=float_in(-MAX_SCALE, MAX_SCALE), default=3.0,
                   help=f"|s| <= {MAX_SCALE:g} (default 3)")
    p.add_argument("--rescale", type=float_in(0, 1), default=0.0, help="guidance rescale phi in [0, 1] (default 0)")
    p.add_argument("--negation", choices=["plain", "perp"], default="plain",
                   help="perp: project NOT terms off the positive guidance, per sample")
    p.add_argument("--correct", choices=sorted(KERNELS), default=None, help="MCMC corrector (default off)")
    p.add_argument("--corrector-steps", type=int_in(1, MAX_CORRECTOR_STEPS), default=2,
                   help=f"corrector steps per corrected level, 1..{MAX_CORRECTOR_STEPS} (default 2)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=7,
                   help=f"concept sets and noise, 0..{MAX_SEED} (default 7)")
    p.add_argument("--select", choices=list(SELECTS), default=None,
                   help="selection while sampling (compdiff sample --select): each set draws --candidates images and "
                   "keeps the best by the model's own lift; each cell records the kept images' lifts and the model "
                   "evaluations spent (default off)")
    p.add_argument("--candidates", type=int_in(1, MAX_CANDIDATES), default=None, metavar="M",
                   help=f"candidates per set with --select, 1..{MAX_CANDIDATES} (default {DEFAULT_CANDIDATES}; 1: "
                   "the plain images, scored)")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=64,
                   help=f"sets sampled together, 1..{MAX_BATCH_SIZE} (default 64)")
    p.add_argument("--device", default="auto",
                   help="where the models sample: auto (cuda if torch sees a GPU, else cpu; under accelerate launch, "
                   "each process its own GPU), cpu, cuda, cuda:1, ...; the judge reads on the CPU")
    add_precision_options(p)
    p.add_argument("--out", required=True,
                   help="report folder: new or empty, or an earlier report of compdiff eval (resumed)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an earlier evaluation in --out; deletes only the files compdiff eval wrote there, "
                   "and refuses a folder that holds anything else")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _hold_out(args: argparse.Namespace, composed) -> str | None:  # noqa: ANN001
    """The split of --sets: --hold-out, else the composed model's own (compdiff.json "training"/"hold_out")."""
    from compdiff.cli import UsageError
    from compdiff.world.holdout import get_split

    name = args.hold_out
    if name is None:
        name = (composed.info.get("training", {}).get("hold_out") or {}).get("name")
    if name is not None:
        get_split(args.task, name)  # an unknown name: InputError listing the task's splits
    if args.sets != "all" and name is None:
        raise UsageError(f"--sets {args.sets} needs a held-out split: --hold-out NAME, or a model trained with one")
    return name


def _components(text: str, task) -> tuple[int, ...]:  # noqa: ANN001
    from compdiff.cli import UsageError

    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise UsageError(f"--components must be comma-separated integers, got {text!r}") from None
    bad = [k for k in ks if not 1 <= k <= task.max_k]
    if bad:
        raise UsageError(f"--components: K must be in 1..{task.max_k} for task {task.name} (the largest concept "
                         f"set its scenes hold), got {', '.join(map(str, bad))}")
    return tuple(ks)


def _shipped() -> str:
    from compdiff.models import shipped_models

    return ", ".join(shipped_models()) or "none"


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a results.json written by compdiff eval."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    spec = data.get("spec") if isinstance(data, dict) else None
    return isinstance(spec, dict) and isinstance(spec.get("task"), str) and isinstance(data.get("cells"), dict) \
        and isinstance(spec.get("methods"), list) and isinstance(spec.get("components"), list)


def _written(entry: os.DirEntry, patterns: tuple[str, ...]) -> bool:
    """A regular file whose whole name is one compdiff eval writes."""
    return not entry.is_symlink() and entry.is_file() and any(re.fullmatch(p, entry.name) for p in patterns)


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether --out holds an earlier report to delete first (--overwrite). Refuses (UsageError) a path
    that cannot be written, a path that is not a folder, a non-empty folder that is not a report, and
    --overwrite of a report folder holding files compdiff eval did not write. Writes nothing."""
    from compdiff.atomic import folder_problem
    from compdiff.cli import UsageError
    from compdiff.expr.display import excerpt
    from compdiff.training.checkpoint import describe

    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    problem = folder_problem(out)
    if problem:
        raise UsageError(f"--out {excerpt(str(out), 80)}: {problem}")
    if not out.exists():
        return False
    entries = sorted(os.scandir(out), key=lambda e: e.name)
    if not entries:
        return False
    # before its first results.json, an evaluation has written grids (and temporary files) only
    early = all(_written(e, EARLY_FILES) for e in entries)
    if not early and not _is_report(out / "results.json"):
        why = "its results.json is not one" if (out / "results.json").exists() else "no results.json"
        names = [e.name + ("/" if e.is_dir() else "") for e in entries if not _written(e, REPORT_FILES)] \
            or [e.name for e in entries]
        raise UsageError(f"--out {out} is not empty and holds no compdiff evaluation ({why}): it holds "
                         f"{describe(names)}. compdiff eval writes a report only into a new or empty folder or "
                         "resumes its own, and never deletes what it did not write: choose another --out")
    if not overwrite:
        return False  # resume: new files are written beside the report's own, nothing is deleted
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if not _written(e, REPORT_FILES)]
    if foreign:
        raise UsageError(f"--overwrite: the report folder {out} also holds files compdiff eval did not write "
                         f"({describe(foreign)}); compdiff deletes only what it wrote: move them away or choose "
                         "another --out")
    return True


def _joint_method(name: str, args: argparse.Namespace, task: str):
    """The Method of a joint baseline; a UsageError when the model is not one, or reads the layout map
    under 'joint' (or does not under 'joint-oracle')."""
    from compdiff.backends import open_model
    from compdiff.cli import UsageError
    from compdiff.eval.composition import Method

    oracle = name == "joint-oracle"
    flag, path = ("--oracle-joint-model", args.oracle_joint_model) if oracle else ("--joint-model", args.joint_model)
    j = open_model(path, device=args.device_)
    j.denoiser.bf16 = args.bf16_  # the composed model's precision (run() chose it)
    cfg = j.info.get("config")
    if j.task != task or cfg is None or not cfg.joint:
        raise UsageError(f"{flag} {path} is not a joint-conditioning model of the {task} task")
    if cfg.uses_bump and not oracle:
        raise UsageError(f"--joint-model {path} reads a map of every position of the set (an oracle layout, "
                         "not a sentence): give it as --oracle-joint-model (method joint-oracle)")
    if oracle and not cfg.uses_bump:
        raise UsageError(f"--oracle-joint-model {path} reads no position map: give it as --joint-model")
    return Method(name, j.denoiser, j.encoder, "sum", True, j.schedule,
                  {"model": path, "reads": "tokens and a map of every position" if oracle else "tokens"},
                  device=args.device_)


def _device(name: str):  # noqa: ANN202
    """--device as compdiff sample reads it; under accelerate launch with several processes, auto gives
    each process the GPU of its local rank (else all would share the first)."""
    import torch

    from compdiff.devices import pick_device

    device = pick_device(name)
    if name == "auto" and device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


def run(args: argparse.Namespace) -> int:
    from compdiff.backends import open_model
    from compdiff.cli import UsageError, apply_precision, requested_precision
    from compdiff.cli.sample import sampler_kwargs
    from compdiff.eval.composition import EvalSpec, Method, run_eval, shard_of_this_process
    from compdiff.eval.concept_sets import check_regions
    from compdiff.eval.judge import WEIGHTS_ROOT, load_judge
    from compdiff.training.checkpoint import clear_folder
    from compdiff.world import get_task

    # everything is checked before anything is written (the report folder is made by run_eval)
    task = get_task(args.task)
    ks = _components(args.components, task)
    methods = tuple(args.methods.split(",")) if args.methods else (
        ("composed", "composed-mean") + (("joint",) if args.joint_model else ())
        + (("joint-oracle",) if args.oracle_joint_model else ()))
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(sorted(unknown))}; accepted: {', '.join(METHODS)}")
    for name in methods:
        if name in REGION_METHODS:
            check_regions(task, name)  # InputError: "composed-regions needs a task whose concepts are ..."
    if "joint" in methods and not args.joint_model:
        raise UsageError("method 'joint' needs --joint-model DIR")
    if "joint-oracle" in methods and not args.oracle_joint_model:
        raise UsageError("method 'joint-oracle' needs --oracle-joint-model DIR")
    for name in set(methods) & set(JOINT_METHODS):
        if args.negate:
            raise UsageError(f"--not cannot be measured for '{name}': a joint-conditioning model has no NOT")
    if args.model is None and task.name not in _shipped().split(", "):
        raise UsageError(f"--task {task.name} has no shipped model (shipped: {_shipped()}): pass --model DIR, a "
                         f"model trained with 'compdiff train --task {task.name}'")
    if not args.out.strip():
        raise UsageError("--out is empty: name the report folder (e.g. reports/objects)")
    out = Path(args.out)
    clear = _check_out(out, args.overwrite)
    args.device_ = _device(args.device)
    precision = requested_precision(args)
    composed = open_model(args.model or task.name, device=args.device_)
    said = apply_precision([composed], precision, rows=min(args.batch_size, args.n) * (max(ks) + 1))
    if said:
        print(f"compdiff eval: {said}", file=sys.stderr, flush=True)
    args.bf16_ = composed.denoiser.bf16
    if composed.task != task.name:
        raise UsageError(f"--model {composed.name} is a {composed.task or composed.family!r} model, not {task.name!r}")
    sampler = args.sampler or composed.sampling.get("sampler", "ddim")
    if args.candidates is not None and args.select is None:
        raise UsageError("--candidates needs --select lift or --select cached-lift")
    candidates = (DEFAULT_CANDIDATES if args.candidates is None else args.candidates) if args.select else 1
    sampler_kwargs(sampler, args.eta)  # a non-zero eta for a sampler without one is a usage error
    hold_out = _hold_out(args, composed)
    spec = EvalSpec(task=task.name, components=ks, n=args.n, negate=args.negate, sampler=sampler,
                    steps=args.steps or int(composed.sampling.get("steps", 50)), spacing=args.spacing,
                    guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size, methods=methods,
                    negation=args.negation, correct=args.correct, corrector_steps=args.corrector_steps, eta=args.eta,
                    rescale=args.rescale, sets=args.sets, hold_out=hold_out, region_size=args.region_size,
                    feather=args.feather, region_mode=args.region_mode, select=args.select, candidates=candidates)
    spec.corrector()  # bad corrector options fail before any work
    built = {}
    for name in methods:
        if name in JOINT_METHODS:
            built[name] = _joint_method(name, args, task.name)
        else:
            mode = "mean" if name == "composed-mean" else "sum"
            built[name] = Method(name, composed.denoiser, composed.encoder, mode, False, composed.schedule,
                                 {"model": args.model or "shipped"}, regions=name in REGION_METHODS,
                                 device=args.device_)
    resolution = composed.latent_shape[-1]
    judges = sorted(int(p.parent.name[5:]) for p in WEIGHTS_ROOT.glob("judge*/config.json")
                    if p.parent.name[5:].isdigit())
    if resolution not in judges:
        raise UsageError(f"--model {composed.name} makes {resolution}x{resolution} images; the judge reads "
                         f"{', '.join(f'{r}x{r}' for r in judges) or 'no resolution'} only")
    judge = load_judge(resolution)
    rank, world = shard_of_this_process()
    main = rank == 0  # under accelerate launch, the first process writes the files
    if world > 1:
        print(f"compdiff eval: process {rank + 1} of {world} (samples chunks {rank + 1}, {rank + 1 + world}, ... of "
              f"--batch-size sets in each cell; process 1 writes the files)", file=sys.stderr, flush=True)
    if clear and main:
        clear_folder(out, {p: None for p in REPORT_FILES})  # _check_out found only what compdiff eval wrote
    t0 = time.perf_counter()
    results = run_eval(spec, built, judge, out, resolution, progress=not args.no_progress)
    if main:
        print((out / "table.md").read_text())
        print(f"wrote {out}/results.json, table.md, accuracy.png and grids ({time.perf_counter() - t0:.0f} s)")
    return 0 if results["cells"] else 1
