"""Opening any model by name or path: the backend registry below every front end.

``open_model(name_or_path)`` returns an :class:`OpenedModel`: what sampling needs
(denoiser, encoder, schedule), how to turn samples into images, the model's recommended
sampler and its family. A *family* is one backend: a detector that looks at a directory
(``compdiff.json``, ``model_index.json``) and an opener. The CLI, the evaluation, the web app
and Python users all come through here, so a new model family is one adapter file that
calls :func:`register_backend`, and nothing in the front ends changes.

A name that is not a path is a shipped world model (``"objects"``, ``"relations"``,
``"attributes"``). compdiff never downloads: anything else is an InputError saying what it
is not.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from compdiff.errors import InputError
from compdiff.generate import OpenedModel


@dataclass(frozen=True)
class Backend:
    """detect(path) -> bool: whether this family can open the directory; open(path, **options) -> OpenedModel
    with options device (torch.device), dtype ("auto" or a torch dtype name) and bf16 (bool), and
    cpu_offload=True only when asked (a family that does not take it cannot be opened with it)."""

    family: str
    detect: Callable[[Path], bool]
    open: Callable[..., OpenedModel]


#: family -> backend, in the order they are tried
BACKENDS: dict[str, Backend] = {}


def register_backend(family: str, detect: Callable[[Path], bool], open: Callable[..., OpenedModel]) -> Backend:
    """Add a model family (a family name may be registered once)."""
    if family in BACKENDS:
        raise ValueError(f"a backend for {family!r} is already registered")
    BACKENDS[family] = Backend(family, detect, open)
    return BACKENDS[family]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; InputError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _load_backends() -> None:
    """Every module of this package is imported once; adapter modules register their family on import
    (they import diffusers and transformers only when a model is opened)."""
    import compdiff.backends as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def detect_family(path: Path) -> str:
    """The family of the model directory ``path``; InputError when no backend recognises it."""
    _load_backends()
    for backend in BACKENDS.values():
        if backend.detect(path):
            return backend.family
    index = path / "model_index.json"
    if index.is_file():
        found = read_json(index).get("_class_name", "no _class_name")
        raise InputError(f"{path}: its model_index.json names {found}, which no compdiff backend opens "
                         f"(families: {', '.join(BACKENDS)}; see docs/pipelines.md)")
    raise InputError(f"{path} is not a model compdiff can open: no compdiff.json (a 'compdiff train' output) "
                     f"and no model_index.json of a supported diffusers pipeline (families: {', '.join(BACKENDS)})")


def open_model(name_or_path: str | Path, *, device: torch.device | str = "cpu", dtype: str = "auto",
               bf16: bool = False, cpu_offload: bool = False) -> OpenedModel:
    """Open a shipped world model by task name, or a model directory of any registered family.

    cpu_offload (diffusers pipelines): accelerate's model CPU offload, as diffusers'
    ``enable_model_cpu_offload``: the text encoders, the UNet/transformer and the VAE stay in CPU memory
    and each is moved to ``device`` (a GPU) only while it runs, so that peak device memory is about the
    largest module plus activations (compdiff.backends.offload). With ``device`` the CPU nothing moves
    (the hooks still run). InputError for a family that does not offload (world models)."""
    from compdiff.models import shipped_models

    device = torch.device(device)
    text = str(name_or_path)
    shipped = shipped_models()
    path = Path(text).expanduser()
    if not path.exists():
        from compdiff.atomic import interrupted_dir

        if text in shipped:
            path = shipped[text]
        elif interrupted_dir(path) is not None:  # a run's model/ whose replacement was killed half-way
            path = interrupted_dir(path)
        else:
            raise InputError(f"{text!r} is neither a shipped model ({', '.join(shipped)}) nor an existing directory. "
                             "compdiff never downloads models: pass a local directory (a 'compdiff train' output, or "
                             "a diffusers pipeline saved with save_pretrained / a Hugging Face cache snapshot folder)")
    if not path.is_dir():
        raise InputError(f"{text!r} is a file, not a model directory")
    backend = BACKENDS[detect_family(path)]
    if not cpu_offload:
        opened = backend.open(path, device=device, dtype=dtype, bf16=bf16)
    else:
        params = inspect.signature(backend.open).parameters
        if "cpu_offload" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise InputError(f"{path}: the {backend.family!r} family does not support cpu_offload")
        opened = backend.open(path, device=device, dtype=dtype, bf16=bf16, cpu_offload=True)
    opened.device = device  # where x_T goes: the denoiser's (execution) device
    return opened
