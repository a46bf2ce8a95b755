"""The training loop: eps-prediction MSE on world renders, on HuggingFace accelerate.

The same code runs on one CPU process, ``accelerate launch --num_processes 2 --cpu``, or GPUs.
Everything random is a function of (seed, step, rank) — the data indices, the noise, the
timesteps, the null dropout — so ``--resume`` continues bit-exactly from a checkpoint.
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from compdiff.errors import InputError
from compdiff.models import save_model
from compdiff.schedule import make_schedule
from compdiff.training.loss import DiffusionLoss
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from compdiff.world import WorldDataset, get_task
from compdiff.world.dataset import check_max_objects

RUN_FILE = "run.json"


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
    cross_attention: bool = False  # token tasks: cross-attention to the condition's tokens
    max_objects: int | None = None  # cap on objects per training scene (None: the task's own)
    data_workers: int = 0  # > 0: render the coming batches in this many worker processes (same batches)

    def model_config(self) -> ModelConfig:
        return ModelConfig(task=self.task, resolution=self.resolution, spatial=self.spatial,
                           channels=tuple(self.channels), layers_per_block=self.layers_per_block,
                           attention=self.attention, joint=self.joint,
                           cross_attention=self.cross_attention, **get_task(self.task).condition_spec())

    def validate(self) -> None:
        if self.cross_attention and get_task(self.task).condition_spec()["cond_kind"] != "tokens":
            raise InputError(f"--cross-attention needs a token task (relations, attributes), not {self.task}")
        check_max_objects(get_task(self.task), self.max_objects)
        levels = len(self.channels) - 1
        if self.resolution < 8 or self.resolution % (2**levels):
            raise InputError(f"--resolution {self.resolution} cannot go through a UNet with {levels} "
                             f"down-samplings: use a multiple of {2**levels} (e.g. 32 or 64)")
        if self.data_workers < 0:
            raise InputError(f"--data-workers must be >= 0, got {self.data_workers}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0.0 <= self.null_prob < 1.0:
            raise InputError(f"--null-prob must be in [0, 1), got {self.null_prob}")


def cpu_has_bf16() -> bool:
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


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume (same config) or --overwrite."""
    out = Path(cfg.out)
    run_file = out / RUN_FILE
    if resume:
        if not run_file.is_file():
            raise InputError(f"--resume: {out} holds no run to resume (no {RUN_FILE})")
        old = json.loads(run_file.read_text())
        mine = json.loads(json.dumps(asdict(cfg)))
        # a setting added after the run started counts as its default
        default = json.loads(json.dumps(asdict(TrainConfig(task=cfg.task, out=cfg.out))))
        differ = [k for k in mine if k not in ("steps", "out", "checkpoint_every", "log_every", "snapshot_every",
                                               "data_workers")
                  and old.get(k, default[k]) != mine[k]]
        if differ:
            raise InputError(f"--resume: the run in {out} was started with other settings ({', '.join(differ)})")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "a training run" if run_file.is_file() else "other files"
            raise InputError(f"{out} already holds {what}; pass --resume to continue it or --overwrite to replace it")


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or continue) the run in cfg.out; export the EMA model to cfg.out/model."""
    cfg.validate()
    prepare_run_dir(cfg, resume, overwrite)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and (torch.cuda.is_available() or cpu_has_bf16()))
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())
    out = Path(cfg.out)
    if acc.is_main_process:
        if overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(json.dumps(asdict(cfg), indent=1))
    acc.wait_for_everyone()

    torch.manual_seed(cfg.seed)  # identical initial weights in every process
    net = ConditionalUNet(cfg.model_config())
    ema = ConditionalUNet(cfg.model_config())
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
        if acc.is_main_process:
            _truncate_metrics(out / "metrics.jsonl", start)
    net, opt = acc.prepare(net, opt)
    if ckpt is not None:  # after prepare: torch puts the state beside the (moved) parameters
        opt.load_state_dict(state["optimizer"])
    ema.to(acc.device)
    loss_fn = DiffusionLoss(make_schedule(cfg.schedule))
    world, rank = acc.num_processes, acc.process_index
    data = WorldDataset(cfg.task, cfg.resolution, cfg.seed, null_prob=cfg.null_prob,
                        length=(cfg.steps + 1) * cfg.batch_size * world, joint=cfg.joint,
                        max_objects=cfg.max_objects)

    stop = _Stop()
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and acc.is_main_process),
               desc=f"train {cfg.task}", unit="step", dynamic_ncols=True)
    log = open(out / "metrics.jsonl", "a") if acc.is_main_process else None
    t0, seen, done = time.perf_counter(), 0, start
    batches = _batch_loader(data, cfg, start, rank, world)
    try:
        for step in range(start, cfg.steps):
            loss = _train_step(cfg, net, opt, acc, next(batches), loss_fn, step, rank)
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
                _export(cfg, ema, out / "snapshots" / f"step-{done:07d}", done)
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
        _export(cfg, ema, model_dir, done)
        _loss_plot(out)
    acc.wait_for_everyone()
    signame = signal.Signals(stop.signum).name if stop.signum is not None else None
    return TrainResult(model_dir, done, signame)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


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


def _batch_loader(data: WorldDataset, cfg: TrainConfig, start: int, rank: int, world: int):
    """An iterator over the batches of steps start, start + 1, ...: rendered inline, or ahead of
    time in cfg.data_workers processes (a GPU waits for the CPU's renders otherwise)."""
    steps = _StepBatches(data, cfg, start, rank, world)
    if cfg.data_workers == 0:
        return (steps[i] for i in range(len(steps)))
    return iter(torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False, num_workers=cfg.data_workers,
                                            prefetch_factor=4, worker_init_fn=_ignore_stop_signals))


def _train_step(cfg, net, opt, acc, batch, loss_fn: DiffusionLoss, step: int, rank: int) -> float:
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
    loss = loss_fn(net, images, t, cond, noise, acc.autocast)
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


def _export(cfg: TrainConfig, ema: ConditionalUNet, model_dir: Path, steps_done: int) -> None:
    """Write the EMA model as a loadable model directory, atomically."""
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    info = {"steps": steps_done, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
            "precision": cfg.precision}
    if cfg.max_objects is not None:
        info["max_objects"] = cfg.max_objects
    if cfg.joint:
        info["kmax"] = get_task(cfg.task).max_true()
    save_model(ema, tmp, cfg.schedule, info)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)


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
