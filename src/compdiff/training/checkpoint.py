"""Training checkpoints: safetensors + JSON, written atomically.

Layout under the run folder::

    checkpoints/step-000400/   model.safetensors, ema.safetensors, optimizer.safetensors, state.json
    checkpoints/latest         the name of the newest complete checkpoint (replaced atomically)

A checkpoint is written to ``step-N.tmp-<pid>`` and renamed when complete; then ``latest``
is replaced (write a temporary file, os.replace); only then are older checkpoints removed
(those of a smaller step: a newer one is never deleted, only replaced when its step is written
again). A kill -9 at any moment leaves ``latest`` naming a complete checkpoint.

Resuming (:func:`resume_checkpoint`) takes the newest checkpoint, by step, among the folders
named exactly ``step-NNNNNNN``; ``latest`` is a hint (a kill between the rename and its
update leaves it one behind; a name that is not such a folder of this run, ``../../etc``, is
ignored and said). A damaged newest checkpoint is refused, naming the file, never skipped.
Nothing is deleted by a glob: only names compdiff writes, and in them only its own files
(:data:`CHECKPOINT_LAYOUT`, :func:`compdiff.atomic.remove_written`).

Exported model folders (``run/model``, ``run/snapshots/step-N``) are replaced the same way by
:func:`replace_dir`: the new folder is written whole as ``model.tmp-<pid>`` and then swapped
with the old one in ONE rename (Linux ``renameat2(RENAME_EXCHANGE)``), so ``run/model`` always
exists and is complete. Where the file system cannot swap, the old folder is renamed aside to
``model.old-<pid>`` first; a kill between the two renames is repaired by
:func:`recover_dir` (on ``--resume``) and read through by :func:`interrupted_dir`.

:func:`unknown_entries` lists what in a folder compdiff did not write (``--overwrite`` deletes
only what it wrote); the layouts are regular expressions matched against whole names.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# the directory swap lives in compdiff.atomic (model loading reads through it too); re-exported here
from compdiff.atomic import (Layout, interrupted_dir, recover_dir, remove_stale, remove_written,  # noqa: F401
                             remove_written_entry, replace_dir, tmp_dir_for, unknown_entries)
from compdiff.errors import InputError

CKPT_DIR = "checkpoints"
#: the name of a checkpoint folder: step-{step:07d}, exactly (7 digits, or more without a leading zero)
STEP = r"step-(?:\d{7}|[1-9]\d{7,})"
PID = r"\d+"
MKSTEMP = r"[a-z0-9_]+"  # the random part of tempfile.mkstemp's names (compdiff.atomic.atomic_write)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a folder named exactly as compdiff names a checkpoint, else None."""
    return int(name[5:]) if re.fullmatch(STEP, name) else None


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
    """Write checkpoint ``step`` whole, point ``latest`` at it, then delete the checkpoints of
    smaller steps beyond the ``keep`` newest (by exact name, only their own files)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = root / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        remove_written(tmp, CHECKPOINT_LAYOUT)
    tmp.mkdir()
    save_file(_state_tensors(model_sd), str(tmp / "model.safetensors"))
    save_file(_state_tensors(ema_sd), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_flat(opt_sd)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=1))
    final = root / name
    if final.exists():
        replace_dir(tmp, final, CHECKPOINT_LAYOUT)  # the same step written again: swapped in whole
    else:
        os.replace(tmp, final)
    latest_tmp = root / f"latest.tmp-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    older = sorted(s for s, _ in checkpoints(run_dir) if s < step)
    for old in older[:max(0, len(older) - (keep - 1))]:
        remove_written(root / checkpoint_name(old), CHECKPOINT_LAYOUT)
    remove_leftovers(root)
    return final


def remove_leftovers(root: Path) -> None:
    """What killed writers left in checkpoints/: ``step-N.tmp-<pid>`` folders and ``latest.tmp-<pid>``
    files of other processes (exact names; in the folders only a checkpoint's own files)."""
    if not root.is_dir():
        return
    mine = str(os.getpid())
    for entry in list(os.scandir(root)):
        stale = re.fullmatch(rf"(?:{STEP}\.(?:tmp|old)|latest\.tmp)-({PID})", entry.name)
        if stale is None or stale.group(1) == mine or entry.is_symlink():
            continue
        if entry.name.startswith("latest"):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            remove_written(Path(entry.path), CHECKPOINT_LAYOUT)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder of the run (exact names, no links), by step."""
    root = Path(run_dir) / CKPT_DIR
    if root.is_symlink() or not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir(follow_symlinks=False):
            found.append((step, Path(entry.path)))
    return sorted(found)


def _pointer(run_dir: Path) -> tuple[str | None, str | None]:
    """(the checkpoint folder name ``latest`` names, or None; why it names none usable, or None)."""
    pointer = Path(run_dir) / CKPT_DIR / "latest"
    if pointer.is_symlink() or not pointer.is_file():
        return None, "checkpoints/latest is missing"
    try:
        text = pointer.read_bytes()[:200].decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, "checkpoints/latest is not readable text"
    if checkpoint_step(text) is None:
        from compdiff.expr.display import excerpt

        return None, f"checkpoints/latest names {excerpt(repr(text), 60)}, not a checkpoint folder of this run"
    if not (pointer.parent / text).is_dir() or (pointer.parent / text).is_symlink():
        return None, f"checkpoints/latest names {text}, which is not there"
    return text, None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder of the run (see :func:`resume_checkpoint`), or None."""
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


class ResumePoint(NamedTuple):
    path: Path  # the checkpoint folder
    state: dict[str, Any]  # load_checkpoint's dict, checked
    note: str | None  # what the user should hear: latest was ignored or behind


def resume_checkpoint(run_dir: Path, expected: dict[str, dict[str, tuple[int, ...]]] | None = None) -> ResumePoint:
    """The checkpoint a ``--resume`` continues from: the newest by step, loaded and checked
    (``expected``: {"model": {name: shape}, "ema": ..., "params": [shape, ...]}). InputError, naming
    the file, when there is none or the newest is damaged."""
    found = checkpoints(run_dir)
    if not found:
        raise InputError(f"--resume: {run_dir} holds no checkpoint to resume from (no {CKPT_DIR}/step-NNNNNNN "
                         "folder): the run stopped before its first checkpoint; start it again with --overwrite")
    step, path = found[-1]
    named, why = _pointer(run_dir)
    note = None
    if why is not None:
        note = f"{why}; resuming from {CKPT_DIR}/{path.name}, the newest checkpoint"
    elif named != path.name:
        note = f"checkpoints/latest names {named}, but {path.name} is newer and complete; resuming from {path.name}"
    return ResumePoint(path, load_checkpoint(path, expected), note)


def _json_file(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise InputError(f"{file} is missing (the checkpoint is incomplete)")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{file}: not readable JSON ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise InputError(f"{file} is missing (the checkpoint is incomplete)")
    try:
        with safe_open(str(file), framework="pt"):
            pass
        return load_file(str(file))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a damaged or foreign file
        raise InputError(f"{file}: not a readable safetensors file ({str(err).splitlines()[0][:200]})") from None


def _mismatch(found: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]) -> str | None:
    missing, extra = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}"
    if extra:
        return f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}"
    for k, shape in want.items():
        if tuple(found[k].shape) != tuple(shape):
            return f"{k!r} has shape {list(found[k].shape)} where the run's network needs {list(shape)}"
    return None


def load_checkpoint(path: Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"step", "model", "ema", "optimizer", and the extra keys saved}. InputError naming the file
    for a missing or damaged one, a step that is not the folder's, and (with ``expected``, see
    :func:`resume_checkpoint`) weights or optimizer state that do not fit the run's network."""
    path = Path(path)
    state_file = path / "state.json"
    state = _json_file(state_file)
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step != checkpoint_step(path.name):
        raise InputError(f"{state_file}: 'step' is {str(step)[:40]!r}, but the folder is {path.name}")
    opt_meta = state.pop("optimizer", None)
    if not (isinstance(opt_meta, dict) and isinstance(opt_meta.get("param_groups"), list)
            and isinstance(opt_meta.get("scalars"), dict)):
        raise InputError(f"{state_file}: no 'optimizer' entry with 'param_groups' and 'scalars'")
    out = {**state}
    for key in ("model", "ema"):
        file = path / f"{key}.safetensors"
        out[key] = _tensors(file)
        problem = expected and _mismatch(out[key], expected[key])
        if problem:
            raise InputError(f"{file} does not fit the network the run describes: {problem}")
    opt_file = path / "optimizer.safetensors"
    try:
        out["optimizer"] = _optimizer_from_flat(_tensors(opt_file), opt_meta)
    except (ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{opt_file}: not an optimizer state compdiff wrote ({err})") from None
    problem = expected and _optimizer_mismatch(out["optimizer"], expected["params"])
    if problem:
        raise InputError(f"{opt_file} does not fit the network the run describes: {problem}")
    return out


def _optimizer_mismatch(opt: dict[str, Any], params: list[tuple[int, ...]]) -> str | None:
    groups = opt["param_groups"]
    ids = [i for g in groups if isinstance(g, dict) for i in (g.get("params") or [])]
    if len(groups) != 1 or ids != list(range(len(params))):
        return f"its parameter groups name {len(ids)} parameters, the network has {len(params)}"
    for pid, st in opt["state"].items():
        if not 0 <= pid < len(params):
            return f"state for parameter {pid}, of {len(params)}"
        for key, val in st.items():
            moment = key in ("exp_avg", "exp_avg_sq")
            if moment and (not isinstance(val, torch.Tensor) or tuple(val.shape) != params[pid]):
                return f"{pid}.{key} has shape {list(getattr(val, 'shape', []))}, the parameter {list(params[pid])}"
            if key == "step" and isinstance(val, torch.Tensor) and not bool(torch.isfinite(val).all()):
                return f"{pid}.step is not finite"
    lr = [g.get("lr") for g in groups if isinstance(g, dict)]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in lr):
        return "a learning rate that is not a finite number"
    return None


# ---- what compdiff writes where -------------------------------------------------------------

MODEL_LAYOUT: Layout = {
    r"compdiff\.json": None, r"cond_embed\.safetensors": None, r"cond_tokens\.safetensors": None,
    "unet": {r"config\.json": None, r"diffusion_pytorch_model(?:-\d{5}-of-\d{5})?\.safetensors": None,
             r"diffusion_pytorch_model\.safetensors\.index\.json": None},
}
CHECKPOINT_LAYOUT: Layout = {r"model\.safetensors": None, r"ema\.safetensors": None,
                             r"optimizer\.safetensors": None, r"state\.json": None}
#: everything ``compdiff train`` writes in a run folder (and the leftovers of killed writes)
RUN_LAYOUT: Layout = {
    r"run\.json": None, rf"\.run\.json\.{MKSTEMP}\.tmp": None, r"metrics\.jsonl": None, r"loss\.png": None,
    "model": MODEL_LAYOUT, rf"model\.tmp-{PID}": MODEL_LAYOUT, rf"model\.old-{PID}": MODEL_LAYOUT,
    CKPT_DIR: {STEP: CHECKPOINT_LAYOUT, rf"{STEP}\.tmp-{PID}": CHECKPOINT_LAYOUT,
               rf"{STEP}\.old-{PID}": CHECKPOINT_LAYOUT, "latest": None,
               rf"latest\.tmp-{PID}": None},
    "snapshots": {STEP: MODEL_LAYOUT, rf"{STEP}\.tmp-{PID}": MODEL_LAYOUT, rf"{STEP}\.old-{PID}": MODEL_LAYOUT},
}


def describe(paths: list[str], limit: int = 4) -> str:
    """'a, b, c and 2 more' for messages."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def clear_folder(folder: Path, layout: Layout | None = None) -> None:
    """Delete every entry of ``folder`` (the folder stays). The caller has checked, with
    :func:`unknown_entries`, that compdiff wrote all of it; with ``layout``, only what it describes
    goes in any case."""
    import shutil

    for entry in os.scandir(folder):
        if layout is not None:
            remove_written_entry(entry, layout)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
