"""Loading a pipeline folder's components, for every family: written once, refusing code and pickles.

A diffusers folder names each component in model_index.json as ``[library, class name]``. Before
anything named there is imported or loaded, every entry is checked (:func:`component_class`):

* the library must be ``diffusers`` or ``transformers`` (anything else, ``["os", "system"]`` or a
  module of the user's, is refused without being imported);
* the class must be what the slot holds: a diffusers scheduler for ``scheduler``, a transformers
  tokenizer for ``tokenizer*``, a torch module (a model) for every other slot. A loader class such
  as ``AutoModel``, a pipeline, a function: refused.

Then a model's folder must hold safetensors (pickles alone are refused, naming the file) and every
model is loaded with ``use_safetensors=True``, so no pickle is ever read whatever the folder holds.
Tokenizers and schedulers read JSON / text files only. Everything is ``local_files_only``.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from compdiff.errors import InputError

LIBRARIES = ("diffusers", "transformers")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
Role = Literal["model", "tokenizer", "scheduler"]


def read_index(root: Path) -> dict[str, Any] | None:
    """model_index.json of ``root`` as a dict, or None when there is none or it is not a JSON object."""
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return index if isinstance(index, dict) else None


def load_index(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(root, model_index.json) of a local pipeline folder; InputError saying compdiff never downloads when
    there is none, naming the file when it is not a JSON object."""
    root = Path(path).expanduser()
    if not (root / "model_index.json").is_file():
        raise InputError(missing_model_message(str(path)))
    index = read_index(root)
    if index is None:
        raise InputError(f"{root / 'model_index.json'}: not a readable JSON object")
    return root, index


def class_detector(prefix: str) -> Callable[[Path], bool]:
    """A registry detector: the folder's model_index.json ``_class_name`` starts with ``prefix``. Variants
    of the family (img2img, ControlNet, ...) are claimed too, so that opening one says it is not supported."""
    def detect(path: Path) -> bool:
        index = read_index(path)
        name = index.get("_class_name") if index else None
        return isinstance(name, str) and name.startswith(prefix)
    return detect


def missing_model_message(path: str) -> str:
    msg = (f"no diffusers pipeline at {path!r} (a local folder with model_index.json is needed): compdiff "
           "does not download models and never reaches the network. Point it at a local copy: a folder "
           "written by `pipeline.save_pretrained(folder)`, or a snapshot already in the Hugging Face cache, "
           "~/.cache/huggingface/hub/models--<org>--<name>/snapshots/<hash>")
    p = Path(path).expanduser()
    snapshots = sorted(p.glob("snapshots/*/model_index.json")) if p.is_dir() else []
    if snapshots:
        msg += f". This looks like a cache folder; try {str(snapshots[-1].parent)!r}"
    elif not p.exists() and path.count("/") == 1 and not path.startswith((".", "/", "~")):
        msg += (f". {path!r} looks like a Hugging Face Hub id: fetch it yourself first (for example "
                f"`hf download {path}`, which prints the snapshot folder) and pass that folder")
    return msg


def role_of(name: str) -> Role:
    """What a model_index.json slot holds: its scheduler, a tokenizer, or a model (a torch module)."""
    if name == "scheduler":
        return "scheduler"
    return "tokenizer" if name.startswith("tokenizer") else "model"


def _is_role(cls: Any, role: Role) -> bool:
    if not isinstance(cls, type):
        return False
    if role == "model":
        return issubclass(cls, torch.nn.Module)
    if role == "scheduler":
        from diffusers import SchedulerMixin

        return issubclass(cls, SchedulerMixin)
    from transformers import PreTrainedTokenizerBase

    return issubclass(cls, PreTrainedTokenizerBase)


def component_class(index_file: Path, name: str, entry: Any) -> type:
    """The class model_index.json names for slot ``name``, checked (module docstring) BEFORE any import
    of what it names: InputError naming the file and the entry otherwise."""
    where = f"{index_file}: entry {name!r}"
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise InputError(f"{where} must be [library, class name], got {entry!r}")
    library, class_name = entry
    if library not in LIBRARIES:
        raise InputError(f"{where} names {library}.{class_name}: compdiff loads pipeline components from "
                         "diffusers and transformers only (nothing else is imported)")
    if not class_name.isidentifier() or class_name.startswith("_"):
        raise InputError(f"{where}: {class_name!r} is not a class name")
    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as err:
        raise InputError(f"{where}: {library}.{class_name} is not available ({err})") from None
    role = role_of(name)
    if not _is_role(cls, role):
        what = {"model": "a model (a torch module such as UNet2DConditionModel or CLIPTextModel)",
                "scheduler": "a scheduler (a diffusers scheduler class)",
                "tokenizer": "a tokenizer (a transformers tokenizer class)"}[role]
        raise InputError(f"{where} names {library}.{class_name}, which is not {what}: compdiff loads only "
                         "models, schedulers and tokenizers, each in its own slot")
    return cls


def refuse_pickled_weights(folder: Path, name: str) -> None:
    """A model folder whose weights are pickles (.bin, .pt, .ckpt, ...) with no safetensors beside them is
    refused here, before any loader (and torch.load) is reached."""
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not any(folder.rglob("*.safetensors")):
        raise InputError(f"{folder} (entry {name!r}) holds pickled weights ({', '.join(pickles[:3])}"
                         f"{', ...' if len(pickles) > 3 else ''}); compdiff loads safetensors only and never "
                         "unpickles: re-save the pipeline with save_pretrained(folder, safe_serialization=True)")


def present(index: dict[str, Any], name: str) -> bool:
    """Whether model_index.json lists component ``name`` (not absent, not [null, null])."""
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def load_components(root: Path, index: dict[str, Any], required: Sequence[str],
                    optional: Sequence[str] = ()) -> dict[str, Any]:
    """The named components of a local pipeline folder: every entry checked first (classes, folders,
    pickles), then each loaded (local files; models with use_safetensors=True). Optional components
    absent or null in model_index.json come back as None."""
    index_file = root / "model_index.json"
    missing = [name for name in required if not present(index, name) or not (root / name).is_dir()]
    if missing:
        raise InputError(f"{root} ({index.get('_class_name', 'unknown pipeline')}) is incomplete: missing "
                         f"{', '.join(missing)}")
    names = [name for name in (*required, *optional) if present(index, name)]
    classes = {name: component_class(index_file, name, index[name]) for name in names}
    for name in names:
        if not (root / name).is_dir():
            raise InputError(f"{index_file}: lists {name} but there is no {name}/ folder")
        if role_of(name) == "model":
            refuse_pickled_weights(root / name, name)
    components: dict[str, Any] = {name: None for name in (*required, *optional)}
    for name in names:
        components[name] = _load_one(classes[name], root / name, name)
    return components


def _load_one(cls: type, folder: Path, name: str) -> Any:
    role = role_of(name)
    kwargs: dict[str, Any] = {} if role == "scheduler" else {"local_files_only": True}
    if role == "model":
        kwargs["use_safetensors"] = True  # never fall back to pickles
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, InputError):
            raise
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise InputError(f"{folder}: cannot load {name} ({first}); compdiff loads local safetensors only and "
                         "does not download models") from None


# ---- one pipeline class per family (SD3, Flux, PixArt): variants and IP-Adapter refused ----------------------
def refuse_variant(found: str, supported: str, what: str) -> None:
    """InputError unless ``found`` is the supported text-to-image pipeline class."""
    if found != supported:
        raise InputError(f"{found} is not supported: compdiff composes {what} text-to-image pipelines only "
                         f"({supported}); image-to-image, inpainting, ControlNet, IP-Adapter and other variants "
                         "are not supported")


def _refuse_ip_adapter(image_encoder: Any, where: str) -> None:
    if image_encoder is not None:
        raise InputError(f"{where} has an image encoder ({image_encoder}): IP-Adapter pipelines are not supported "
                         "by compdiff (composition is over text prompts only); save the pipeline without it")


def load_folder(path: str | os.PathLike, supported: str, what: str, required: Sequence[str],
                optional: Sequence[str] = ()) -> dict[str, Any]:
    """The named components of a local pipeline folder of class ``supported`` (components.py: local files,
    safetensors only; code and pickles named by model_index.json refused before any import)."""
    root, index = load_index(path)
    refuse_variant(str(index.get("_class_name", "an unknown pipeline")), supported, what)
    image_encoder = index.get("image_encoder")
    _refuse_ip_adapter(image_encoder[-1] if isinstance(image_encoder, list) and image_encoder else None, str(root))
    return load_components(root, index, required, optional)


def components_of(pipeline: Any, supported: str, what: str, required: Sequence[str],
                  optional: Sequence[str] = ()) -> dict[str, Any]:
    """The named components of a built pipeline object (InputError for another pipeline class)."""
    refuse_variant(type(pipeline).__name__, supported, what)
    parts = dict(getattr(pipeline, "components", {}))
    _refuse_ip_adapter(parts.get("image_encoder"), supported)
    missing = [name for name in required if parts.get(name) is None]
    if missing:
        raise InputError(f"this {supported} is incomplete: missing {', '.join(missing)}")
    return {name: parts.get(name) for name in (*required, *optional)}


def to_device(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` in ``dtype`` (cast only when it differs: diffusers warns on any cast), in eval mode."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device).eval()


def open_dtype(device: torch.device, dtype: str, gpu: torch.dtype = torch.bfloat16) -> torch.dtype:
    """``dtype`` "auto": ``gpu`` on an accelerator (float16 for SD/SDXL; bfloat16 for SD3, Flux and PixArt,
    trained in bf16: Flux and T5 overflow in float16), float32 on the CPU; else the named torch dtype."""
    if dtype == "auto":
        return gpu if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


__all__ = ["read_index", "load_index", "class_detector", "component_class", "load_components", "present",
           "refuse_pickled_weights", "load_folder", "components_of", "refuse_variant", "to_device", "open_dtype", "missing_model_message", "role_of"]
