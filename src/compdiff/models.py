"""World models on disk: build, save and load (safetensors + JSON only, never pickles).

A model directory::

    compdiff.json               format, ModelConfig, noise schedule, training summary
    unet/                       a plain diffusers UNet2DModel directory (config.json + safetensors),
                                a UNet2DConditionModel one for cross-attention models
    cond_embed.safetensors      the condition embedding
    cond_tokens.safetensors     the condition token sequence (cross-attention models only)
    README.md                   model card (shipped models)

``load_model(path)`` returns ``Loaded(denoiser, encoder, schedule)``; ``compdiff.open_model``
opens these directories (and diffusers pipelines) for the CLI, the evaluation and users.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from compdiff.denoiser import ConceptEncoder
from compdiff.errors import InputError
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.schedule import Schedule, make_schedule
from compdiff.world.tasks import get_task

FORMAT = "compdiff-model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class Loaded(NamedTuple):
    """Unpacks as ``denoiser, encoder, schedule``; ``.config`` is the ModelConfig."""

    denoiser: "InferenceDenoiser"
    encoder: ConceptEncoder
    schedule: Schedule

    @property
    def config(self) -> ModelConfig:
        return self.denoiser.net.cfg


class JointEncoder:
    """ConceptEncoder of a joint-conditioning model: each "concept" is a whole set, written as
    the task's concepts joined by ";" (e.g. "0.30,0.50; 0.70,0.50"). encode -> (K, Kmax, D),
    padded with null rows; null() -> (1, Kmax, D), the empty set."""

    def __init__(self, task: str, kmax: int) -> None:
        self.task, self.kmax = get_task(task), kmax

    def encode(self, concepts: Sequence[str]) -> Tensor:
        return torch.stack([self._one(text) for text in concepts])

    def _one(self, text: str) -> Tensor:
        parts = [p for p in text.split(";") if p.strip()]
        if len(parts) > self.kmax:
            raise InputError(f"a joint set holds at most {self.kmax} concepts, got {len(parts)}: {text!r}")
        rows = self.task.to_tensor([self.task.parse(p.strip()) for p in parts]) if parts else self.null()[0, :0]
        return torch.cat([rows, self.task.null_row().expand(self.kmax - len(parts), -1)])

    def null(self) -> Tensor:
        return self.task.null_row().expand(self.kmax, -1).unsqueeze(0).clone()


class InferenceDenoiser:
    """Wraps a ConditionalUNet as a Denoiser for sampling: no autograd; optional bf16 autocast."""

    def __init__(self, net: ConditionalUNet, bf16: bool = False) -> None:
        self.net = net.eval()
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(x, t, cond).to(x.dtype)


def _condition_modules(net: ConditionalUNet) -> list[tuple[str, torch.nn.Module]]:
    """The condition modules beside the UNet, each saved as NAME.safetensors."""
    return [(n, m) for n, m in (("cond_embed", net.cond_embed), ("cond_tokens", net.cond_tokens)) if m is not None]


def save_model(net: ConditionalUNet, path: str | Path, schedule_spec: dict[str, Any],
               training: dict[str, Any] | None = None) -> None:
    """Write a model directory (the caller makes it atomic if it needs to)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    net.unet.save_pretrained(path / "unet", safe_serialization=True)
    for name, module in _condition_modules(net):
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                  str(path / f"{name}.safetensors"))
    meta = {"format": FORMAT, "version": 1, "model": net.cfg.to_dict(), "schedule": schedule_spec,
            "training": training or {}}
    (path / "compdiff.json").write_text(json.dumps(meta, indent=2))


def _refuse_pickles(path: Path) -> None:
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles and not list(path.rglob("*.safetensors")):
        raise InputError(f"{path} holds pickled weights ({', '.join(pickles)}); compdiff loads "
                         "safetensors only and never unpickles. Re-save them as safetensors.")


def load_model(path: str | Path, bf16: bool = False) -> Loaded:
    """Load a trained model directory (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory {str(path)!r} does not exist")
    _refuse_pickles(path)
    meta_file = path / "compdiff.json"
    if not meta_file.is_file():
        raise InputError(f"{path} is not a compdiff model directory (no compdiff.json); "
                         "train one with 'compdiff train' or use a shipped model")
    meta = _read_meta(meta_file)
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_file} is not a compdiff model config (format {meta.get('format')!r})")
    cfg = ModelConfig.from_dict(meta["model"])
    unet_cls = UNet2DConditionModel if cfg.cross_attention else UNet2DModel
    unet = unet_cls.from_pretrained(path / "unet", use_safetensors=True)
    net = ConditionalUNet(cfg, unet)
    for name, module in _condition_modules(net):
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    encoder = JointEncoder(cfg.task, meta["training"]["kmax"]) if cfg.joint else get_task(cfg.task).encoder()
    return Loaded(InferenceDenoiser(net, bf16), encoder, make_schedule(meta["schedule"]))


def recommended_sampling(path: str | Path) -> dict[str, Any]:
    """The sampler a model directory's compdiff.json recommends, e.g. {"sampler": "ddpm",
    "steps": 100} ("sampling"; empty when it names none). Samplers never read it: front ends
    use it as their default. The sampler must be one of ``compdiff.SAMPLERS``."""
    from compdiff.sampling import SAMPLERS

    meta_file = Path(path) / "compdiff.json"
    sampling = _read_meta(meta_file).get("sampling", {}) if meta_file.is_file() else {}
    ok = isinstance(sampling, dict) and not set(sampling) - {"sampler", "steps"} \
        and sampling.get("sampler", "ddim") in SAMPLERS and isinstance(sampling.get("steps", 1), int) \
        and sampling.get("steps", 1) >= 1
    if not ok:
        raise InputError(f"{meta_file}: 'sampling' must be like {{\"sampler\": \"ddpm\", \"steps\": 100}} with a "
                         f"sampler among {', '.join(SAMPLERS)}, got {sampling!r}")
    return dict(sampling)


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """compdiff.json as a dict; InputError naming the file when it is not valid JSON or not an object."""
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{meta_file}: not readable JSON ({err})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    return meta


def shipped_models() -> dict[str, Path]:
    """task -> directory of the model shipped in the package."""
    root = Path(str(resources.files("compdiff"))) / "weights"
    out = {}
    for d in sorted(root.glob("*")):
        meta = d / "compdiff.json"
        if meta.is_file():
            out.setdefault(json.loads(meta.read_text())["model"]["task"], d)
    return out


def load_pretrained(task: str = "objects", bf16: bool = False) -> Loaded:
    """The model shipped with compdiff for ``task`` (no download: it is in the package)."""
    shipped = shipped_models()
    if task not in shipped:
        have = ", ".join(shipped) or "none"
        raise InputError(f"no shipped model for task {task!r} (shipped: {have}); pass --model DIR "
                         "with a model trained by 'compdiff train'")
    return load_model(shipped[task], bf16=bf16)
