"""Training checkpoints: safetensors + JSON, written atomically.

Layout under the run folder::

    checkpoints/step-000400/   model.safetensors, ema.safetensors, optimizer.safetensors, state.json
    checkpoints/latest         the name of the newest complete checkpoint (replaced atomically)

A checkpoint is written to ``step-N.tmp-<pid>`` and renamed when complete; then ``latest``
is replaced (write a temporary file, os.replace); only then are older checkpoints removed.
A kill -9 at any moment leaves ``latest`` naming a complete checkpoint.
"""
from __future__ import annotations

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
