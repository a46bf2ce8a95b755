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
import math
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from compdiff.denoiser import ConceptEncoder
from compdiff.errors import InputError
from compdiff.nn import ConditionalUNet, ModelConfig
from compdiff.schedule import Schedule, make_schedule
from compdiff.world.tasks import get_task

FORMAT = "compdiff-model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: bounds on every number compdiff.json gives (a model folder must not make compdiff loop or allocate
#: without bound): integers of 'model' (lo, hi), its sequences (most entries, each lo..hi), and the rest
MODEL_INTS = {"resolution": (8, 4096), "layers_per_block": (1, 16), "norm_groups": (1, 1024),
              "attention_levels": (1, 8)}
MODEL_SEQUENCES = {"channels": (8, 1, 8192), "vocab_sizes": (64, 1, 1_000_000), "token_groups": (64, 0, 63)}
MAX_KMAX = 1000
MAX_SAMPLING_STEPS = 1000  # compdiff sample / eval --steps accept as many
#: ``--dtype`` values a world model honours: it computes in float32 (``--bf16``: bf16 autocast)
WORLD_DTYPES = ("auto", "float32")


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
    """Wraps a ConditionalUNet as a Denoiser for sampling: no autograd; optional bf16 autocast.
    A network trained to output v (``cfg.prediction``) is turned into eps with ``schedule``."""

    def __init__(self, net: ConditionalUNet, bf16: bool = False, schedule: Schedule | None = None) -> None:
        self.net = net.eval()
        self.bf16 = bf16
        self.prediction = getattr(net.cfg, "prediction", "epsilon")
        if self.prediction != "epsilon" and schedule is None:
            raise ValueError(f"a network that outputs {self.prediction} needs its schedule to give eps")
        self.schedule = schedule

    @torch.inference_mode()
    def __call__(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x, t, cond).to(x.dtype)
        if self.prediction == "epsilon":
            return out
        return self.schedule.eps_from_prediction(x, out, t, self.prediction)


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


def load_model(path: str | Path, bf16: bool = False, dtype: str = "auto") -> Loaded:
    """Load a trained model directory (see the module docstring).

    A damaged directory is an InputError naming the file and what is wrong with it: compdiff.json
    unreadable, not an object or lacking a key, or a number out of its bounds (``MODEL_INTS``,
    ``MODEL_SEQUENCES``, the schedule's in ``compdiff.schedule.make_schedule``); a missing unet/ or
    weight file; weights whose names or shapes differ from the network compdiff.json describes
    (nothing is silently ignored). ``dtype`` (``--dtype``) other than auto or float32 is refused:
    world models compute in float32, and bf16 autocast is ``bf16``, never silently ignored."""
    from compdiff.atomic import interrupted_dir

    if dtype not in WORLD_DTYPES:
        raise InputError(f"--dtype {str(dtype)[:20]}: a compdiff world model computes in float32 (--dtype sets the "
                         "weights of diffusers pipelines); use --bf16 for bf16 autocast, or leave --dtype auto")
    path = Path(path)
    if not path.is_dir():
        # a run's model/ whose replacement was killed half-way (file systems that cannot swap folders)
        found = interrupted_dir(path)
        if found is None:
            raise InputError(f"model directory {str(path)!r} does not exist")
        path = found
    _refuse_pickles(path)
    meta_file = path / "compdiff.json"
    if not meta_file.is_file():
        raise InputError(f"{path} is not a compdiff model directory (no compdiff.json); "
                         "train one with 'compdiff train' or use a shipped model")
    meta = _read_meta(meta_file)
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_file} is not a compdiff model config (format {meta.get('format')!r})")
    cfg, expected = _model_config(meta, meta_file)
    try:
        schedule = make_schedule(meta.get("schedule"))
    except (ValueError, TypeError, OverflowError) as err:  # InputError included
        raise InputError(f"{meta_file}: 'schedule' is not a noise schedule ({err})") from None
    kmax = None
    if cfg.joint:
        kmax = meta.get("training", {}).get("kmax") if isinstance(meta.get("training"), dict) else None
        if isinstance(kmax, bool) or not isinstance(kmax, int) or not 1 <= kmax <= MAX_KMAX:
            raise InputError(f"{meta_file}: a joint-conditioning model needs 'training': {{'kmax': N}} with N in "
                             f"1..{MAX_KMAX} (the largest concept set), got {str(kmax)[:40]!r}")
    unet = _load_unet(path / "unet", cfg, expected.unet, meta_file)
    net = ConditionalUNet(cfg, unet)
    for name, module in _condition_modules(net):
        _load_module(module, path / f"{name}.safetensors", dict(_condition_modules(expected))[name], meta_file)
    encoder = JointEncoder(cfg.task, kmax) if cfg.joint else get_task(cfg.task).encoder()
    return Loaded(InferenceDenoiser(net, bf16, schedule), encoder, schedule)


def _model_config(meta: dict[str, Any], meta_file: Path) -> tuple[ModelConfig, ConditionalUNet]:
    """compdiff.json's 'model' as a ModelConfig, and the network it describes built on the meta
    device (shapes only); InputError naming the file when either is impossible."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise InputError(f"{meta_file}: " + ("no 'model' entry (the network's configuration)" if model is None
                                             else f"'model' must be a JSON object, got {type(model).__name__}"))
    try:
        cfg = ModelConfig.from_dict(model)
    except KeyError as err:
        raise InputError(f"{meta_file}: 'model' lacks the key {err}") from None
    except (TypeError, ValueError) as err:
        raise InputError(f"{meta_file}: 'model' is not a model configuration ({err})") from None
    for f in fields(ModelConfig):
        value, default = getattr(cfg, f.name), f.default
        if default is MISSING or isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float) if isinstance(default, float) else int) and not isinstance(value, bool)
        else:  # tuples of int, or of tuples of int
            flat = [x for v in value for x in (v if isinstance(v, tuple) else (v,))]
            ok = all(isinstance(x, int) and not isinstance(x, bool) for x in flat)
        if not ok:
            raise InputError(f"{meta_file}: 'model' has a bad {f.name!r}: {str(value)[:80]}")
    _check_bounds(cfg, meta_file)
    if not 8 <= cfg.resolution <= 4096 or not cfg.channels or min(cfg.channels) < 1 or cfg.layers_per_block < 1:
        raise InputError(f"{meta_file}: 'model' has impossible sizes (resolution {cfg.resolution}, "
                         f"channels {list(cfg.channels)}, layers_per_block {cfg.layers_per_block})")
    try:
        get_task(cfg.task)
    except InputError as err:
        raise InputError(f"{meta_file}: {err}") from None
    try:
        with torch.device("meta"):
            expected = ConditionalUNet(cfg)
    except Exception as err:  # noqa: BLE001 - whatever the constructors refuse
        raise InputError(f"{meta_file}: 'model' describes no network compdiff can build "
                         f"({type(err).__name__}: {err})") from None
    return cfg, expected


def _check_bounds(cfg: ModelConfig, meta_file: Path) -> None:
    """Every number of 'model' inside its bound (InputError naming the file and the key), before any
    network is built: a layers_per_block of 10**9 would otherwise build modules for hours."""
    def bad(name: str, value: Any, want: str) -> InputError:
        return InputError(f"{meta_file}: 'model' has {name} {str(value)[:80]}; {want}")

    for name, (lo, hi) in MODEL_INTS.items():
        value = getattr(cfg, name)
        if not lo <= value <= hi:
            raise bad(name, value, f"it must be {lo}..{hi:,}")
    for name, (most, lo, hi) in MODEL_SEQUENCES.items():
        value = getattr(cfg, name)
        flat = [x for v in value for x in (v if isinstance(v, tuple) else (v,))]
        if len(value) > most or len(flat) > most * most or any(not lo <= x <= hi for x in flat):
            raise bad(name, list(value)[:8], f"at most {most} entries, each {lo}..{hi:,}")
    sigma = cfg.bump_sigma
    if not (math.isfinite(sigma) and 0 < sigma <= 1):
        raise bad("bump_sigma", sigma, "it must be a number in (0, 1] (a fraction of the image)")


def _shape_mismatch(found: dict[str, tuple[int, ...]], module: torch.nn.Module) -> str | None:
    """How tensors ``found`` (name -> shape) differ from ``module``'s state dict, or None."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}"
    for k in want:
        if want[k] != found[k]:
            return f"{k!r} has shape {list(found[k])} where the configuration needs {list(want[k])}"
    return None


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a damaged or foreign file
        raise InputError(f"{file}: not a readable safetensors file ({str(err).splitlines()[0][:200]})") from None


def _load_unet(unet_dir: Path, cfg: ModelConfig, expected: torch.nn.Module,
               meta_file: Path) -> UNet2DModel | UNet2DConditionModel:
    """unet/ loaded locally (never the hub), checked tensor by tensor against compdiff.json's network."""
    if not unet_dir.is_dir():
        raise InputError(f"{unet_dir.parent}: the unet/ folder (the UNet's config.json and weights) is missing")
    if not (unet_dir / "config.json").is_file():
        raise InputError(f"{unet_dir}: config.json is missing")
    config = _read_meta(unet_dir / "config.json")
    weights = sorted(unet_dir.glob("*.safetensors"))
    if not weights:
        raise InputError(f"{unet_dir}: no weights (diffusion_pytorch_model.safetensors is missing)")
    found: dict[str, tuple[int, ...]] = {}
    for w in weights:
        found.update(_safetensors_shapes(w))
    label = weights[0] if len(weights) == 1 else unet_dir
    problem = _shape_mismatch(found, expected)
    if problem:
        raise InputError(f"{label} does not fit the network {meta_file.name} describes (channels "
                         f"{list(cfg.channels)}, layers_per_block {cfg.layers_per_block}): {problem}")
    want = json.loads(json.dumps(dict(expected.config), default=list))
    for key in ("block_out_channels", "layers_per_block", "in_channels", "out_channels", "down_block_types",
                "up_block_types", "norm_num_groups", "cross_attention_dim"):
        if key in config and key in want and config[key] != want[key]:
            raise InputError(f"{unet_dir / 'config.json'}: {key} is {config[key]!r} but {meta_file.name} describes "
                             f"a network with {want[key]!r}")
    unet_cls = UNet2DConditionModel if cfg.cross_attention else UNet2DModel
    try:
        unet = unet_cls.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise InputError(f"{unet_dir}: the UNet does not load ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:300] if str(err) else ''})") from None
    problem = _shape_mismatch({k: tuple(v.shape) for k, v in unet.state_dict().items()}, expected)
    if problem:
        raise InputError(f"{unet_dir / 'config.json'} does not describe the network {meta_file.name} does: {problem}")
    return unet


def _load_module(module: torch.nn.Module, file: Path, expected: torch.nn.Module, meta_file: Path) -> None:
    if not file.is_file():
        raise InputError(f"{file.parent}: {file.name} is missing (weights of the condition's encoder)")
    problem = _shape_mismatch(_safetensors_shapes(file), expected)
    if problem:
        raise InputError(f"{file} does not fit the network {meta_file.name} describes: {problem}")
    module.load_state_dict(load_file(str(file)))


def recommended_sampling(path: str | Path) -> dict[str, Any]:
    """The sampler a model directory's compdiff.json recommends, e.g. {"sampler": "ddpm",
    "steps": 100} ("sampling"; empty when it names none). Samplers never read it: front ends
    use it as their default. The sampler must be one of ``compdiff.SAMPLERS``."""
    from compdiff.sampling import SAMPLERS

    meta_file = Path(path) / "compdiff.json"
    sampling = _read_meta(meta_file).get("sampling", {}) if meta_file.is_file() else {}
    steps = sampling.get("steps", 1) if isinstance(sampling, dict) else None
    ok = isinstance(sampling, dict) and not set(sampling) - {"sampler", "steps"} \
        and isinstance(sampling.get("sampler", "ddim"), str) and sampling.get("sampler", "ddim") in SAMPLERS \
        and isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_SAMPLING_STEPS
    if not ok:
        raise InputError(f"{meta_file}: 'sampling' must be like {{\"sampler\": \"ddpm\", \"steps\": 100}} with a "
                         f"sampler among {', '.join(SAMPLERS)} and 1..{MAX_SAMPLING_STEPS} steps, "
                         f"got {str(sampling)[:80]}")
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
