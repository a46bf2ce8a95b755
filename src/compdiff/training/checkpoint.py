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

import ctypes
import errno
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths a and b in one step (Linux renameat2 RENAME_EXCHANGE). False where the
    system or the file system cannot (the caller falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def tmp_dir_for(target: Path) -> Path:
    """Where a new version of ``target`` is written before :func:`replace_dir` puts it in place."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}")


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` at ``target``; the old ``target`` (if any) is removed.

    ``target`` is never missing once it existed: the two folders are swapped in one rename, then
    the old one (now at ``tmp``) is deleted. Without RENAME_EXCHANGE: old -> ``NAME.old-<pid>``,
    tmp -> target, delete the old (see :func:`recover_dir`). Other processes' leftovers of
    ``target`` (``NAME.tmp-*``, ``NAME.old-*``) are removed afterwards."""
    tmp, target = Path(tmp), Path(target)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        _remove(tmp)  # the old version
    else:
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        if os.path.lexists(old):
            _remove(old)
        os.rename(target, old)
        os.rename(tmp, target)
        _remove(old)
    remove_stale(target)


def _remove(path: Path) -> None:
    """Delete a folder, or only the link (or file) where ``path`` is one."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _siblings(target: Path, kind: str) -> list[Path]:
    """NAME.<kind>-<pid> folders beside ``target`` (kind: "tmp" or "old")."""
    prefix = f"{target.name}.{kind}-"
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir()
                  if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and p.is_dir()
                  and not p.is_symlink())


def interrupted_dir(target: Path) -> Path | None:
    """When ``target`` is missing because a fallback swap was killed between its two renames:
    the folder that belongs there (the new one, complete, when both halves are present; else
    the old one). None when there is no such leftover."""
    target = Path(target)
    if os.path.lexists(target):
        return None
    for old in reversed(_siblings(target, "old")):
        new = target.with_name(f"{target.name}.tmp-{old.name.rsplit('-', 1)[1]}")
        # the old folder is moved aside only once the new one is complete
        return new if new.is_dir() else old
    return None


def recover_dir(target: Path) -> None:
    """Repair an interrupted :func:`replace_dir` (put the right folder back at ``target``) and
    remove the leftovers of killed writers."""
    found = interrupted_dir(target)
    if found is not None:
        os.rename(found, target)
    remove_stale(target)


def remove_stale(target: Path) -> None:
    """Delete ``NAME.tmp-<pid>`` / ``NAME.old-<pid>`` beside ``target`` unless <pid> is this process
    (only once ``target`` exists: otherwise they may be the only copy, see :func:`recover_dir`)."""
    if not Path(target).is_dir():
        return
    mine = str(os.getpid())
    for p in _siblings(Path(target), "tmp") + _siblings(Path(target), "old"):
        if p.name.rsplit("-", 1)[1] != mine:
            shutil.rmtree(p, ignore_errors=True)


# ---- what compdiff wrote ---------------------------------------------------------------------

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
