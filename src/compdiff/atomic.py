"""Files and folders written whole or not at all: a temporary beside the target, then a rename.

A failure or an interrupt leaves no partial file (the temporary one is removed), and the
file gets the ordinary permissions of the umask (mkstemp alone would make it 0600).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
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


# ---- folders swapped whole (a model export) ---------------------------------------------------------
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
