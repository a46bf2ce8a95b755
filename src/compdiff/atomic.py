"""Files written whole or not at all: a temporary file beside the target, then a rename.

A failure or an interrupt leaves no partial file (the temporary one is removed), and the
file gets the ordinary permissions of the umask (mkstemp alone would make it 0600).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder (created if missing), then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(image: Any, path: str | Path) -> None:
    """A PIL image to ``path`` as PNG, atomically."""
    atomic_write(path, lambda f: image.save(f, format="PNG"), binary=True)


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """``data`` as JSON to ``path``, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=indent)))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))
