"""--device for every front end: one parser of device names, so the CLI and the web app (which never
import each other) refuse the same names with the same words."""
from __future__ import annotations

import torch

from compdiff.errors import InputError
from compdiff.expr.display import excerpt


def check_device(name: str) -> None:
    """InputError for ``cpu:N`` with N >= 1: torch accepts it and ignores the index, which would say
    something that is not so (``cpu`` and ``cpu:0`` are the one CPU device)."""
    text = str(name).strip().lower()
    if text.startswith("cpu:") and text != "cpu:0":
        raise InputError(f"--device {excerpt(str(name), 40)}: the CPU is one device and takes no index; use --device cpu")


def pick_device(name: str) -> torch.device:
    """--device: auto, cpu, cuda or cuda:N (checked by :func:`check_device` first); a GPU that torch
    cannot see is an InputError."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {excerpt(str(name), 40)!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"--device {excerpt(str(name), 40)!r}: compdiff runs on cpu or cuda")
    return device
