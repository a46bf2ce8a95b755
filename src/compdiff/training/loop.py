"""The training loop: eps-prediction MSE on world renders, on HuggingFace accelerate.

The same code runs on one CPU process, several (``accelerate launch --multi_gpu --num_processes 2``: on a
machine without a GPU that starts CPU processes; ``--cpu`` would start one), or GPUs.
Everything random is a function of (seed, step, rank) — the data indices, the noise, the
timesteps, the null dropout — so ``--resume`` continues bit-exactly from a checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from compdiff.atomic import folder_problem, remove_written, write_json
from compdiff.progress import progress_bar
from compdiff.errors import InputError
from compdiff.precision import PrecisionChoice, resolve
from compdiff.models import save_model
from compdiff.schedule import make_schedule
from compdiff.training.loss import WEIGHTINGS, DiffusionLoss
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.nn.unet import PREDICTIONS
from compdiff.training.checkpoint import (CHECKPOINT_LAYOUT, CKPT_DIR, MODEL_LAYOUT, RUN_LAYOUT, STEP, ResumePoint,
                                         checkpoint_step, clear_folder, describe, recover_dir, remove_leftovers,
                                         replace_dir, resume_checkpoint, save_checkpoint, tmp_dir_for,
                                         unknown_entries)
from compdiff.world import WorldDataset, get_task
from compdiff.world.dataset import check_max_objects, check_omit_prob
from compdiff.world.holdout import get_split

RUN_FILE = "run.json"

#: the accepted range of each numeric option ``compdiff train --help`` states (name: (lowest, highest)).
#: Integers unless noted; lr and ema_decay are real numbers, checked finite.
LIMITS: dict[str, tuple[float, float]] = {
    "resolution": (8, 512), "steps": (1, 10_000_000), "batch_size": (1, 4096), "warmup": (0, 10_000_000),
    "seed": (0, 2**31 - 1), "layers_per_block": (1, 8), "data_workers": (0, 64),
    "checkpoint_every": (1, 10_000_000), "log_every": (1, 10_000_000), "snapshot_every": (0, 10_000_000),
}
MAX_LR = 1.0
#: where training scenes come from; "torch" covers the built-in tasks (world/batch.py)
SCENES = ("python", "torch")
TORCH_TASKS = ("objects", "relations", "attributes", "described")
#: UNet block widths: 1 to MAX_LEVELS blocks, each a multiple of 8 (the group norm's 8 groups) up to MAX_WIDTH
MAX_LEVELS, MAX_WIDTH = 6, 1024


class TrainResult(NamedTuple):
    model_dir: Path  # the exported EMA model (run/model)
    steps_done: int
    interrupted_by: str | None  # "SIGINT"/"SIGTERM" when a signal stopped the run early


@dataclass
class TrainConfig:
    task: str
    out: str
    resolution: int = 32
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    null_prob: float = 0.1
    seed: int = 0
    precision: str = "auto"  # "auto" | "bf16" | "fp32"
    checkpoint_every: int = 200
    snapshot_every: int = 0  # > 0: also export the EMA model to snapshots/step-N (accuracy-vs-steps curves)
    log_every: int = 10
    schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "cosine", "T": 1000})
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    spatial: bool = True
    attention: bool = False
    joint: bool = False  # the joint-conditioning baseline: condition = the scene's whole concept set
    cross_attention: bool = False  # cross-attention to the condition's tokens (objects: one per position)
    max_objects: int | None = None  # cap on objects per training scene (None: the task's own)
    data_workers: int = 0  # > 0: render the coming batches in this many worker processes (same batches)
    hold_out: str | None = None  # a held-out split of the task (compdiff.world.holdout): never in training
    joint_subsets: bool = False  # joint baseline: label = a random non-empty subset of the true set
    scenes: str = "python"  # "torch": scenes, labels and renders drawn on the training device (world/batch.py)
    prediction: str = "epsilon"  # the network's output: "epsilon" or "v_prediction"
    loss_weighting: str = "none"  # "none" | "min-snr" (training/loss.py)
    attention_levels: int = 1  # cross_attention at the lowest this many resolutions
    pixel_coords: bool = False  # input channels saying where each pixel is (nn.conditioning.coord_channels)
    token_sink: bool = False  # cross_attention: a learned token before the condition's (nn.conditioning.WithSink)
    omit_prob: float | None = None  # relations/described labels: chance each attribute word is left out (None: task's)

    def model_config(self) -> ModelConfig:
        return ModelConfig(task=self.task, resolution=self.resolution, spatial=self.spatial,
                           channels=tuple(self.channels), layers_per_block=self.layers_per_block,
                           attention=self.attention, joint=self.joint,
                           cross_attention=self.cross_attention, attention_levels=self.attention_levels,
                           prediction=self.prediction, pixel_coords=self.pixel_coords,
                           token_sink=self.token_sink, **get_task(self.task).condition_spec())

    def validate(self) -> None:
        """Every setting in range, and the model buildable: InputError naming the flag, before any file is written."""
        task = get_task(self.task)
        for name, (lo, hi) in LIMITS.items():
            _check_int(name, getattr(self, name), lo, hi)
        _check_real("lr", self.lr, 0.0, MAX_LR, lo_open=True)
        _check_real("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        _check_real("null_prob", self.null_prob, 0.0, 1.0, hi_open=True)
        _check_real("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_real("weight_decay", self.weight_decay, 0.0, 1.0)
        channels = tuple(self.channels)
        if not 1 <= len(channels) <= MAX_LEVELS or any(
                isinstance(c, bool) or not isinstance(c, int) or not 8 <= c <= MAX_WIDTH or c % 8 for c in channels):
            raise InputError(f"--channels must be 1 to {MAX_LEVELS} comma-separated block widths, each a multiple "
                             f"of 8 from 8 to {MAX_WIDTH} (the UNet's group norm has 8 groups), "
                             f"got {','.join(map(str, channels))}")
        try:
            check_max_objects(task, self.max_objects)
        except InputError as err:
            raise InputError(f"--max-objects: {err}") from None
        levels = len(channels) - 1
        if self.resolution % (2**levels):
            raise InputError(f"--resolution {self.resolution} cannot go through a UNet with {levels} "
                             f"down-samplings: use a multiple of {2**levels} (e.g. 32 or 64)")
        if self.hold_out is not None:
            get_split(self.task, self.hold_out)
        if self.joint_subsets and not self.joint:
            raise InputError("--joint-subsets applies to the joint baseline (--joint) only")
        try:
            check_omit_prob(task, self.omit_prob, self.joint)
        except InputError as err:
            raise InputError(f"--omit-prob: {err}") from None
        if self.prediction not in PREDICTIONS:
            raise InputError(f"--prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.loss_weighting not in WEIGHTINGS:
            raise InputError(f"--loss-weighting must be one of {', '.join(WEIGHTINGS)}, got {self.loss_weighting!r}")
        if not 1 <= self.attention_levels <= len(channels):
            raise InputError(f"--attention-levels must be 1..{len(channels)} (one per block width of --channels), "
                             f"got {self.attention_levels}")
        if self.attention_levels > 1 and not self.cross_attention:
            raise InputError("--attention-levels applies to --cross-attention only")
        if self.token_sink and not self.cross_attention:
            raise InputError("--token-sink applies to --cross-attention only")
        if self.scenes not in SCENES:
            raise InputError(f"--scenes must be one of {', '.join(SCENES)}, got {self.scenes!r}")
        if self.scenes == "torch" and (self.joint or self.data_workers or task.name not in TORCH_TASKS):
            raise InputError("--scenes torch draws one concept per image of a built-in task in the training "
                             "process: not with --joint, --data-workers or a task of your own (use --scenes python)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        make_schedule(self.schedule)
        try:  # the shapes only: no memory, no time
            with torch.device("meta"):
                ConditionalUNet(self.model_config())
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the UNet's constructor refuses
            raise InputError(f"this model cannot be built ({type(err).__name__}: {err}); check --channels, "
                             "--layers-per-block and --resolution") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{_flag(name)} must be >= {lo:,} and <= {hi:,} (an integer), got {value!r}")


def _check_real(name: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise InputError(f"{_flag(name)} must be {'>' if lo_open else '>='} {lo:g} and {'<' if hi_open else '<='} "
                         f"{hi:g} (a finite number), got {value!r}")


def cpu_has_bf16() -> bool:
    """Whether /proc/cpuinfo lists native bf16 (avx512_bf16, amx_bf16). Printed by bench/bf16_conv.py
    for reference only: --precision auto decides by timing (compdiff.precision), never by flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio·lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint after the current step and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _read_run_file(run_file: Path) -> dict[str, Any] | None:
    """run.json as written by ``compdiff train``, or None when it is not one."""
    try:
        data = json.loads(run_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("task"), str) and "steps" in data else None


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume (same config) or --overwrite; a folder that
    is not a run (or a run holding files compdiff did not write) is never replaced. Writes nothing."""
    from compdiff.expr.display import excerpt

    if not str(cfg.out).strip():
        raise InputError("--out is empty: name the run folder (e.g. runs/objects32); compdiff never trains into "
                         "the current folder by default")
    out = Path(cfg.out)
    run_file = out / RUN_FILE
    if os.path.lexists(out) and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    problem = folder_problem(out)
    if problem:
        raise InputError(f"--out {excerpt(str(out), 80)}: {problem}")
    if resume:
        if not run_file.is_file():
            raise InputError(f"--resume: {out} holds no run to resume (no {RUN_FILE})")
        old = _read_run_file(run_file)
        if old is None:
            raise InputError(f"--resume: {run_file} is not a compdiff run file (not the JSON 'compdiff train' writes)")
        mine = json.loads(json.dumps(asdict(cfg)))
        # a setting added after the run started counts as its default
        default = json.loads(json.dumps(asdict(TrainConfig(task=cfg.task, out=cfg.out))))
        differ = [k for k in mine if k not in ("steps", "out", "checkpoint_every", "log_every", "snapshot_every",
                                               "data_workers")
                  and old.get(k, default[k]) != mine[k]]
        if differ:
            raise InputError(f"--resume: the run in {out} was started with other settings ({', '.join(differ)})")
        inside = _foreign_inside(out)
        if inside:
            raise InputError(f"--resume: {describe(inside)} in {out}: compdiff did not write it, and resuming "
                             "replaces or deletes the folder it is in; move it away (compdiff deletes only what "
                             "it wrote)")
        return
    if not out.exists() or not any(out.iterdir()):
        return
    if _read_run_file(run_file) is None:
        what = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
        why = f"{RUN_FILE} is not a compdiff run file" if run_file.exists() else f"no {RUN_FILE}"
        raise InputError(f"--out {out} is not empty and is not a compdiff training run ({why}); it holds "
                         f"{describe(what)}. compdiff starts a run only in a new or empty folder and never deletes "
                         "what it did not write: choose another --out")
    unknown = unknown_entries(out, RUN_LAYOUT)
    if not overwrite:
        hint = "--resume to continue it" + (f" (it also holds files compdiff did not write: {describe(unknown)})"
                                            if unknown else " or --overwrite to replace it")
        raise InputError(f"{out} already holds a training run; pass {hint}")
    if unknown:
        raise InputError(f"--overwrite: the run folder {out} also holds files compdiff did not write "
                         f"({describe(unknown)}); compdiff deletes only what it wrote: move them away or choose "
                         "another --out")


def _foreign_inside(out: Path) -> list[str]:
    """What compdiff did not write inside the folders a resumed run replaces or deletes: model/,
    snapshots/step-N/ and checkpoints/step-N/ (paths relative to ``out``). Entries of other names
    beside them are the user's and are left alone."""
    found = []
    for rel, layout in (("model", MODEL_LAYOUT),):
        if (out / rel).is_dir() and not (out / rel).is_symlink():
            found += [f"{rel}/{p}" for p in unknown_entries(out / rel, layout)]
    for rel, layout in (("snapshots", MODEL_LAYOUT), (CKPT_DIR, CHECKPOINT_LAYOUT)):
        folder = out / rel
        if folder.is_symlink() or not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if checkpoint_step(entry.name) is not None and entry.is_dir(follow_symlinks=False):
                found += [f"{rel}/{entry.name}/{p}" for p in unknown_entries(Path(entry.path), layout)]
    return found


def _clean_after_kill(out: Path) -> None:
    """On resume: put back a model folder whose replacement was killed half-way, remove the
    half-written folders (``NAME.tmp-<pid>``) of killed processes: exact names only, and in them
    only the files compdiff writes."""
    recover_dir(out / "model", MODEL_LAYOUT)
    snapshots = out / "snapshots"
    if snapshots.is_dir() and not snapshots.is_symlink():
        for p in list(snapshots.iterdir()):
            m = re.fullmatch(rf"({STEP})\.(?:tmp|old)-\d+", p.name)
            if m:
                recover_dir(snapshots / m.group(1), MODEL_LAYOUT)
    ckpts = out / CKPT_DIR
    if ckpts.is_dir() and not ckpts.is_symlink():
        remove_leftovers(ckpts)


def _expected_shapes(cfg: TrainConfig) -> dict[str, Any]:
    """The shapes a checkpoint of this run holds (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = ConditionalUNet(cfg.model_config())
    sd = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return {"model": sd, "ema": sd, "params": [tuple(p.shape) for p in net.parameters()]}


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or continue) the run in cfg.out; export the EMA model to cfg.out/model."""
    cfg.validate()
    prepare_run_dir(cfg, resume, overwrite)
    # the checkpoint to continue from, loaded and checked before anything is written
    point: ResumePoint | None = resume_checkpoint(Path(cfg.out), _expected_shapes(cfg)) if resume else None
    # mixed precision is our own autocast (below), chosen by timing once the network exists
    acc = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    out = Path(cfg.out)
    if acc.is_main_process:
        if point is not None and point.note:
            print(f"compdiff train: {point.note}", file=sys.stderr, flush=True)
        if resume:
            _clean_after_kill(out)
        elif overwrite and out.is_dir():
            clear_folder(out, RUN_LAYOUT)  # prepare_run_dir checked that compdiff wrote all of it
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_FILE, asdict(cfg))
    acc.wait_for_everyone()

    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    net = ConditionalUNet(cfg.model_config())
    ema = ConditionalUNet(cfg.model_config())
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    ckpt = point.path if point is not None else None
    if point is not None:
        state = point.state
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
        if acc.is_main_process:
            _truncate_metrics(out / "metrics.jsonl", start)
    loss_fn = DiffusionLoss(make_schedule(cfg.schedule), cfg.prediction, cfg.loss_weighting)
    world, rank = acc.num_processes, acc.process_index
    data = WorldDataset(cfg.task, cfg.resolution, cfg.seed, null_prob=cfg.null_prob,
                        length=(cfg.steps + 1) * cfg.batch_size * world, joint=cfg.joint,
                        max_objects=cfg.max_objects, joint_subsets=cfg.joint_subsets, omit_prob=cfg.omit_prob,
                        hold_out=get_split(cfg.task, cfg.hold_out) if cfg.hold_out else None)
    choice = _choose_precision(cfg, acc, net, loss_fn, data)
    autocast = partial(torch.autocast, acc.device.type, dtype=torch.bfloat16, enabled=choice.bf16)
    net, opt = acc.prepare(net, opt)
    if ckpt is not None:  # after prepare: torch puts the state beside the (moved) parameters
        try:
            opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise InputError(f"{ckpt / 'optimizer.safetensors'} does not fit the run's optimizer "
                             f"({str(err).splitlines()[0][:200]})") from None
    ema.to(acc.device)

    stop = _Stop()
    bar = progress_bar(cfg.steps, f"train {cfg.task}", "step", disable=not (progress and acc.is_main_process),
                       initial=start)
    log = open(out / "metrics.jsonl", "a") if acc.is_main_process else None
    t0, seen, done = time.perf_counter(), 0, start
    batches = _batch_loader(data, cfg, start, rank, world, acc.device)
    try:
        for step in range(start, cfg.steps):
            loss = _train_step(cfg, net, opt, acc, next(batches), loss_fn, step, rank, autocast)
            _ema_update(ema, acc.unwrap_model(net), min(cfg.ema_decay, (1 + step) / (10 + step)))
            seen += cfg.batch_size * world
            done = step + 1
            if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.steps):
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                log.write(json.dumps({"step": done, "loss": loss, "lr": lr_at(cfg, step), "images_per_s": rate}) + "\n")
                log.flush()
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop.signum is not None:
                _checkpoint(cfg, acc, net, ema, opt, done)
            if cfg.snapshot_every and done % cfg.snapshot_every == 0 and acc.is_main_process:
                _export(cfg, ema, out / "snapshots" / f"step-{done:07d}", done, world, choice)
            if stop.signum is not None:
                break
    finally:
        del batches  # stops the data workers
        bar.close()
        stop.restore()
        if log:
            log.close()
    model_dir = out / "model"
    if acc.is_main_process:
        _export(cfg, ema, model_dir, done, world, choice)
        _loss_plot(out)
    acc.wait_for_everyone()
    signame = signal.Signals(stop.signum).name if stop.signum is not None else None
    return TrainResult(model_dir, done, signame)


#: rows of the timed step of --precision auto: the real batch's first rows (a second or two on a CPU)
PRECISION_PROBE_ROWS = 8


def _choose_precision(cfg: TrainConfig, acc: Accelerator, net: ConditionalUNet, loss_fn: DiffusionLoss,
                      data: WorldDataset) -> PrecisionChoice:
    """bf16 autocast or float32 for the run (compdiff.precision): as asked, or (auto) by timing a
    forward and backward of a copy of the network on the first rows of step 0's batch, in the main
    process; every process then runs what the main process chose. The timing draws from no random
    stream the run uses (a copy of the network, a generator of its own), so a run under auto is
    bit-identical to the same run under the precision auto chose."""
    def step(bf16: bool) -> None:
        probe.zero_grad(set_to_none=True)
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = probe(x_t, t, cond)
        pred.float().square().mean().backward()

    choice = None
    if acc.is_main_process:
        probe = copy.deepcopy(net).to(acc.device)
        images, cond, _ = next(_batch_loader(data, replace(cfg, data_workers=0), 0, 0, 1, acc.device))
        rows = min(PRECISION_PROBE_ROWS, images.shape[0])
        g = torch.Generator().manual_seed(0)
        t = torch.randint(0, loss_fn.schedule.T, (rows,), generator=g).to(acc.device)
        images, cond = images[:rows].to(acc.device), cond[:rows].to(acc.device)
        x_t = loss_fn.schedule.add_noise(images, torch.randn(images.shape, generator=g).to(acc.device), t)
        choice = resolve(cfg.precision, acc.device, step)
        del probe
        if choice.reason == "measured":  # an explicit --precision is not news
            print(f"compdiff train: {choice.describe()}", file=sys.stderr, flush=True)
    if acc.num_processes > 1:
        choice = broadcast_object_list([choice])[0]
    return choice


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from."""
    if path.is_file():
        keep = [ln for ln in path.read_text(errors="replace").splitlines() if _logged_step(ln) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line that is not one (a kill -9 half-way
    through a write): it is dropped."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return math.inf
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


class _StepBatches(torch.utils.data.Dataset):
    """Item i = this process's batch for step start + i: images (step·world + rank)·B onwards.
    A pure function of the step, so worker processes render exactly the batches of the inline loop."""

    def __init__(self, data: WorldDataset, cfg: TrainConfig, start: int, rank: int, world: int) -> None:
        self.data, self.B, self.start, self.rank, self.world = data, cfg.batch_size, start, rank, world
        self.n = cfg.steps - start

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        first = ((self.start + i) * self.world + self.rank) * self.B
        return self.data.batch(range(first, first + self.B))


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the main process saves a checkpoint and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _batch_loader(data: WorldDataset, cfg: TrainConfig, start: int, rank: int, world: int,
                  device: torch.device):
    """An iterator over the batches of steps start, start + 1, ...: drawn on the training device
    (``scenes="torch"``: a function of (seed, step, rank)), or by index on the CPU, inline or ahead
    of time in cfg.data_workers processes."""
    if cfg.scenes == "torch":
        return (data.device_batch(data.step_generator(step, rank, device), cfg.batch_size, device)
                for step in range(start, cfg.steps))
    steps = _StepBatches(data, cfg, start, rank, world)
    if cfg.data_workers == 0:
        return (steps[i] for i in range(len(steps)))
    return iter(torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False, num_workers=cfg.data_workers,
                                            prefetch_factor=4, worker_init_fn=_ignore_stop_signals))


def _train_step(cfg, net, opt, acc, batch, loss_fn: DiffusionLoss, step: int, rank: int,
                autocast: Callable[[], ContextManager]) -> float:
    B = cfg.batch_size
    images, cond, _ = batch
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
    t = torch.randint(0, loss_fn.schedule.T, (B,), generator=g)
    noise = torch.randn(images.shape, generator=g)
    if cfg.joint:  # the dataset's joint mode has no null dropout: drop whole sets here (for guidance)
        drop = torch.rand(B, generator=g) < cfg.null_prob
        cond = torch.where(drop.view(-1, 1, 1), torch.zeros_like(cond), cond)
    images, cond, t, noise = (v.to(acc.device) for v in (images, cond, t, noise))
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    loss = loss_fn(net, images, t, cond, noise, autocast)
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    acc.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return acc.reduce(loss.detach(), reduction="mean").item()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p.detach().to(pe.dtype), 1 - decay)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


def _checkpoint(cfg, acc, net, ema, opt, done: int) -> None:
    if acc.is_main_process:
        save_checkpoint(Path(cfg.out), done, acc.unwrap_model(net).state_dict(), ema.state_dict(),
                        opt.state_dict(), {"task": cfg.task})
    acc.wait_for_everyone()


def _export(cfg: TrainConfig, ema: ConditionalUNet, model_dir: Path, steps_done: int, processes: int = 1,
            choice: PrecisionChoice | None = None) -> None:
    """Write the EMA model as a loadable model directory, atomically: written whole beside it, then
    swapped in (``model_dir`` stays a complete model at every moment; see checkpoint.replace_dir)."""
    tmp = tmp_dir_for(model_dir)
    if tmp.exists():  # this process's own temporary name
        remove_written(tmp, MODEL_LAYOUT)
    info = {"steps": steps_done, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
            "precision": cfg.precision, "processes": processes}  # each process draws batch_size images a step
    if choice is not None:  # what ran, and (auto) the timing that chose it
        info["precision_used"] = choice.name
        if choice.reason == "measured":
            info["precision_timing_ms"] = {"fp32": round(1e3 * choice.fp32_s, 2), "bf16": round(1e3 * choice.bf16_s, 2)}
    if cfg.max_objects is not None:
        info["max_objects"] = cfg.max_objects
    if cfg.hold_out is not None:
        info["hold_out"] = get_split(cfg.task, cfg.hold_out).to_json()
    if cfg.joint_subsets:
        info["joint_subsets"] = True
    if cfg.omit_prob is not None:
        info["omit_prob"] = cfg.omit_prob
    if cfg.loss_weighting != "none":
        info["loss_weighting"] = cfg.loss_weighting
    info["scenes"] = cfg.scenes
    if cfg.joint:
        info["kmax"] = get_task(cfg.task).max_true()
    save_model(ema, tmp, cfg.schedule, info)
    replace_dir(tmp, model_dir, MODEL_LAYOUT)


def _loss_plot(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="eps MSE", yscale="log", title=f"training loss ({out.name})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
