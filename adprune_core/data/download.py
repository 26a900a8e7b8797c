"""Fetching a dataset that is not on disk: ``download`` streams a URL to a file, ``download_or_explain``
runs a fetch only when ``data.download`` allows it and turns any failure into one ``DataError`` line.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from adprune_core.data.messages import one_line
from adprune_core.errors import DataError
from adprune_core.files import atomic_write
from adprune_core.sections import DataConfig

_T = TypeVar("_T")


def download(url: str, dest: Path) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; ``dest`` appears only once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(part: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

    atomic_write(dest, write)
    return dest


def download_or_explain(cfg: DataConfig, fetch: Callable[[], _T], where: str, fix: str) -> _T:
    """Run ``fetch`` when ``cfg.download`` allows it; any failure becomes one DataError line."""
    if not cfg.download:
        raise DataError(f"{where} and data.download is false; {fix}")
    try:
        return fetch()
    except Exception as exc:  # offline, HTTP, disk, checksum and archive errors all mean "not available"
        raise DataError(f"{where} and the download failed ({one_line(exc)}); {fix}") from None
