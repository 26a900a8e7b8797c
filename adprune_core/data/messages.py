"""How the data modules word a problem: one-line ``DataError`` messages.

``one_line(exc)`` squeezes any exception (an archive, file-system, network or pickle error) into
``Type: text`` on one line of at most ~200 characters, for the middle of a DataError. ``missing_root``
is the error for a ``data.root`` that does not exist: it names the path, what belongs there and how
to point ``data.root`` elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from adprune_core.errors import DataError
from adprune_core.sections import DATA_ROOT_ENV


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: text`` on one line (``zlib.error``, not a bare ``error``)."""
    name = type(exc).__name__
    name = f"{type(exc).__module__}.{name}" if name == "error" else name
    text = " ".join(str(exc).split())
    return f"{name}: {text[:200]}" if text else name


def missing_root(root: Path, expected: str) -> DataError:
    """The error for a ``data.root`` that does not exist; ``expected`` says what belongs there."""
    return DataError(f"data.root: '{root.absolute()}' does not exist; put {expected} there, or set data.root "
                     f"(or ${DATA_ROOT_ENV}) to where the data is")
