"""Writing files so that no reader ever sees them half-written; checking, before any work, that they can be."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adprune_core.errors import ConfigError


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)``, flush it to disk, rename it to ``target``: ``target`` is never seen half-written,
    and no temporary file is left behind when ``write`` fails or is interrupted."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` (absolute) if this process may write files in it, or may create it (its nearest existing
    ancestor is a folder it may write in); creates nothing. Otherwise a one-line ``ConfigError`` that names
    ``flag`` (how the user gave the path, e.g. ``--out (OUT=)``), the path, what is wrong and the fix."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: '{existing}' is a file"
        raise ConfigError(f"{flag}: '{path}' {what}, not a folder; name a folder (it is created if missing) "
                          "or move the file away")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write in '{existing}' (read-only or permission denied); make it "
                          f"writable (chmod u+w '{existing}') or name another folder")
    return path


def check_writable_file(path: str | Path, flag: str) -> Path:
    """``path`` (absolute) if this process may write it (and the journal files beside it), or create it;
    else a one-line ``ConfigError`` as ``check_writable_dir`` gives."""
    path = Path(path).absolute()
    check_writable_dir(path.parent, flag)
    if path.exists() and (path.is_dir() or not os.access(path, os.W_OK)):
        what = "is a folder, not a file" if path.is_dir() else "is read-only"
        raise ConfigError(f"{flag}: '{path}' {what}; make it a writable file (chmod u+w) or name another one")
    return path
