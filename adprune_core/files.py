"""Writing files so that no reader ever sees them half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
