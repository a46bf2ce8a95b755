"""Files and folders written whole or not at all: a temporary beside the target, then a rename.

A failure or an interrupt leaves no partial file (the temporary one is removed), and the
file gets the ordinary permissions of the umask (mkstemp alone would make it 0600).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
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


def folder_problem(path: str | Path) -> str | None:
    """Why a folder of outputs (a run, a report) cannot be written at ``path``, or None: the checks of
    :func:`output_problem` (``directory=True``), then a real try, since permission bits do not tell
    everything (root, a read-only or pseudo file system such as /sys, an immutable folder): a
    temporary file made and removed at once in the folder, or in its nearest existing ancestor."""
    problem = output_problem(path, directory=True)
    if problem:
        return problem
    ancestor = Path(path)
    try:
        while not ancestor.exists() and ancestor.parent != ancestor:
            ancestor = ancestor.parent
        fd, probe = tempfile.mkstemp(prefix=".compdiff-probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"cannot create files in {_short(ancestor)} ({err.strerror or type(err).__name__})"
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


def replace_dir(tmp: Path, target: Path, layout: "Layout | None" = None) -> None:
    """Put the complete folder ``tmp`` at ``target``; the old ``target`` (if any) is removed.

    ``target`` is never missing once it existed: the two folders are swapped in one rename, then
    the old one (now at ``tmp``) is deleted. Without RENAME_EXCHANGE: old -> ``NAME.old-<pid>``,
    tmp -> target, delete the old (see :func:`recover_dir`). Other processes' leftovers of
    ``target`` (``NAME.tmp-*``, ``NAME.old-*``) are removed afterwards. With ``layout`` (what the
    folder holds), the old version loses only the files compdiff writes (:func:`remove_written`)."""
    tmp, target = Path(tmp), Path(target)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        _remove(tmp, layout)  # the old version
    else:
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        if os.path.lexists(old):
            _remove(old, layout)
        os.rename(target, old)
        os.rename(tmp, target)
        _remove(old, layout)
    remove_stale(target, layout)


def _remove(path: Path, layout: "Layout | None" = None) -> None:
    """Delete a folder, or only the link (or file) where ``path`` is one; with ``layout``, only
    the files it describes (a folder holding anything else stays)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    elif layout is not None:
        remove_written(path, layout)
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


def recover_dir(target: Path, layout: "Layout | None" = None) -> None:
    """Repair an interrupted :func:`replace_dir` (put the right folder back at ``target``) and
    remove the leftovers of killed writers (with ``layout``: only the files compdiff writes)."""
    found = interrupted_dir(target)
    if found is not None:
        os.rename(found, target)
    remove_stale(target, layout)


def remove_stale(target: Path, layout: "Layout | None" = None) -> None:
    """Delete ``NAME.tmp-<pid>`` / ``NAME.old-<pid>`` beside ``target`` unless <pid> is this process
    (only once ``target`` exists: otherwise they may be the only copy, see :func:`recover_dir`).
    With ``layout`` (what such a folder holds), only the files it names go (:func:`remove_written`)."""
    if not Path(target).is_dir():
        return
    mine = str(os.getpid())
    for p in _siblings(Path(target), "tmp") + _siblings(Path(target), "old"):
        if p.name.rsplit("-", 1)[1] != mine:
            if layout is None:
                shutil.rmtree(p, ignore_errors=True)
            else:
                remove_written(p, layout)


# ---- what compdiff wrote ---------------------------------------------------------------------
#: a folder layout: {regular expression a name must match whole: None for a file, or the layout of a
#: sub-folder}. Exact names: compdiff removes only what matches what it writes, never "step-*"-like globs.
Layout = dict


def _match(name: str, layout: Layout) -> "Layout | None | bool":
    """The entry of ``layout`` whose pattern matches ``name`` whole, False when none does."""
    return next((sub for pattern, sub in layout.items() if re.fullmatch(pattern, name)), False)


def unknown_entries(folder: Path, layout: Layout, _prefix: str = "") -> list[str]:
    """Paths (relative to ``folder``) of what ``layout`` does not describe: files or folders
    compdiff did not write, in any depth. Links are never compdiff's."""
    unknown = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = _prefix + entry.name
        sub = _match(entry.name, layout)
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


def remove_written_entry(entry: os.DirEntry, layout: Layout) -> None:
    """Delete one entry of a folder if ``layout`` describes it (a file by exact name, a sub-folder by
    :func:`remove_written`); anything else, and every link, stays."""
    sub = _match(entry.name, layout)
    if sub is False or entry.is_symlink():
        return
    if sub is None and entry.is_file(follow_symlinks=False):
        os.unlink(entry.path)
    elif sub is not None and entry.is_dir(follow_symlinks=False):
        remove_written(Path(entry.path), sub)


def remove_written(folder: Path, layout: Layout) -> bool:
    """Delete what ``layout`` describes in ``folder`` (files by exact name, sub-folders likewise),
    then ``folder`` itself once it is empty. Anything else (and every link) stays where it is.
    True when ``folder`` is gone."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    for entry in list(os.scandir(folder)):
        remove_written_entry(entry, layout)
    try:
        folder.rmdir()
    except OSError:  # something compdiff did not write is left in it
        return False
    return True
