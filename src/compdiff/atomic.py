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


def output_problem(path: str | Path, directory: bool = False, create_parents: bool = True) -> str | None:
    """Why ``path`` cannot be written, or None: checked before any work, creating nothing.

    A file (``directory=False``): it must not be a directory or anything but a regular file,
    and its folder must exist (or, with ``create_parents``, be creatable: the nearest existing
    ancestor is a writable directory) and be writable, since the file is written beside it
    and renamed. A folder of files (``directory=True``): an existing one must be a writable
    directory; a missing one must be creatable as above."""
    p = Path(path)
    try:
        if not str(path):
            return "empty path"
        if "\0" in str(path):
            return "the path holds a NUL character"
        if directory:
            if p.exists():
                if not p.is_dir():
                    return "exists and is not a directory"
                return None if os.access(p, os.W_OK | os.X_OK) else "the directory is not writable"
            folder = p
        else:
            if p.is_dir():
                return "is a directory; name a file"
            if p.exists() and not p.is_file():
                return "exists and is not a regular file"
            folder = p.parent
        ancestor = folder
        while not ancestor.exists():
            if not create_parents and ancestor == folder:
                return f"the directory {_short(folder)} does not exist"
            if ancestor.parent == ancestor:
                break
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"{_short(ancestor)} is not a directory"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return f"the directory {_short(ancestor)} is not writable"
    except OSError as err:  # a name too long, a loop of links, no permission to look
        return err.strerror or type(err).__name__
    except ValueError as err:  # an embedded NUL byte
        return str(err)
    return None


def _short(path: Path, limit: int = 80) -> str:
    from compdiff.expr.display import excerpt

    return excerpt(str(path), limit)
