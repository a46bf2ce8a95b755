"""Training checkpoints: safetensors + JSON, written atomically.

Layout under the run folder::

    checkpoints/step-000400/   model.safetensors, ema.safetensors, optimizer.safetensors, state.json
    checkpoints/latest         the name of the newest complete checkpoint (replaced atomically)

A checkpoint is written to ``step-N.tmp-<pid>`` and renamed when complete; then ``latest``
is replaced (write a temporary file, os.replace); only then are older checkpoints removed.
A kill -9 at any moment leaves ``latest`` naming a complete checkpoint.

Exported model folders (``run/model``, ``run/snapshots/step-N``) are replaced the same way by
:func:`replace_dir`: the new folder is written whole as ``model.tmp-<pid>`` and then swapped
with the old one in ONE rename (Linux ``renameat2(RENAME_EXCHANGE)``), so ``run/model`` always
exists and is complete. Where the file system cannot swap, the old folder is renamed aside to
``model.old-<pid>`` first; a kill between the two renames is repaired by
:func:`recover_dir` (on ``--resume``) and read through by :func:`interrupted_dir`.

:func:`unknown_entries` lists what in a folder compdiff did not write (``--overwrite`` deletes
only what it wrote).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

# the directory swap lives in compdiff.atomic (model loading reads through it too); re-exported here
from compdiff.atomic import interrupted_dir, recover_dir, remove_stale, replace_dir, tmp_dir_for  # noqa: F401

CKPT_DIR = "checkpoints"


def _state_tensors(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _optimizer_to_flat(opt_sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and the rest (JSON)."""
    tensors, scalars = {}, {}
    for pid, st in opt_sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": opt_sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, model_sd: dict, ema_sd: dict, opt_sd: dict,
                    extra: dict[str, Any], keep: int = 1) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = root / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_tensors(model_sd), str(tmp / "model.safetensors"))
    save_file(_state_tensors(ema_sd), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_flat(opt_sd)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=1))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f"latest.tmp-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    complete = sorted(p for p in root.glob("step-*") if ".tmp" not in p.name)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("*.tmp-*"):  # leftovers of killed writers
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CKPT_DIR / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """{"step", "model", "ema", "optimizer", and the extra keys saved}."""
    state = json.loads((path / "state.json").read_text())
    opt_meta = state.pop("optimizer")
    return {
        **state,
        "model": load_file(str(path / "model.safetensors")),
        "ema": load_file(str(path / "ema.safetensors")),
        "optimizer": _optimizer_from_flat(load_file(str(path / "optimizer.safetensors")), opt_meta),
    }


# ---- replacing a whole folder atomically ----------------------------------------------------

#: a folder layout: {name pattern (fnmatch): None for a file, or the layout of a sub-folder}
Layout = dict

MODEL_LAYOUT: Layout = {
    "compdiff.json": None, "cond_embed.safetensors": None, "cond_tokens.safetensors": None,
    "unet": {"config.json": None, "diffusion_pytorch_model*.safetensors": None,
             "diffusion_pytorch_model*.safetensors.index.json": None},
}
CHECKPOINT_LAYOUT: Layout = {"model.safetensors": None, "ema.safetensors": None, "optimizer.safetensors": None,
                             "state.json": None}
#: everything ``compdiff train`` writes in a run folder (and the leftovers of killed writes)
RUN_LAYOUT: Layout = {
    "run.json": None, ".run.json.*.tmp": None, "metrics.jsonl": None, "loss.png": None,
    "model": MODEL_LAYOUT, "model.tmp-*": MODEL_LAYOUT, "model.old-*": MODEL_LAYOUT,
    "model.tmp": MODEL_LAYOUT,  # what a killed export of older compdiff versions left
    CKPT_DIR: {"step-*": CHECKPOINT_LAYOUT, "latest": None, "latest.tmp-*": None},
    "snapshots": {"step-*": MODEL_LAYOUT},
}


def unknown_entries(folder: Path, layout: Layout, _prefix: str = "") -> list[str]:
    """Paths (relative to ``folder``) of what ``layout`` does not describe: files or folders
    compdiff did not write, in any depth. Links are never compdiff's."""
    unknown = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = _prefix + entry.name
        sub = next((v for pat, v in layout.items() if fnmatch.fnmatchcase(entry.name, pat)), False)
        if entry.is_symlink() or sub is False:
            unknown.append(rel + ("/" if entry.is_dir(follow_symlinks=False) else ""))
        elif sub is None:
            if not entry.is_file(follow_symlinks=False):
                unknown.append(rel + "/")
        elif entry.is_dir(follow_symlinks=False):
            unknown += unknown_entries(Path(entry.path), sub, rel + "/")
        else:
            unknown.append(rel)
    return unknown


def describe(paths: list[str], limit: int = 4) -> str:
    """'a, b, c and 2 more' for messages."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def clear_folder(folder: Path) -> None:
    """Delete every entry of ``folder`` (the folder stays). The caller has checked, with
    :func:`unknown_entries`, that compdiff wrote all of it."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
