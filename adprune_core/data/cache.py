"""The cache of decoded datasets: in this process, and on disk as .npy arrays plus a JSON file.

``cached(cfg, name, source, fingerprint, build)`` returns ``build()``'s ImageData unless this process
(the two most recent datasets) or the disk cache under ``cfg.resolved_cache_dir()`` already holds it
for the same source and fingerprint (the source's path, size and modification time), so a study that
loads the same data once per trial decodes it once. A disk entry counts only once its meta.json is
written; an absent, partial or foreign entry is decoded again, and an unwritable cache folder only
costs speed. The cached tensors are shared: callers treat them as read-only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adprune_core.data.images import ImageData
from adprune_core.files import atomic_write
from adprune_core.sections import DataConfig

_CACHE_VERSION = 1
_MEMORY: OrderedDict[tuple[str, str], tuple[str, ImageData]] = OrderedDict()
_MEMORY_SLOTS = 2  # full datasets are large: keep the most recent two
_ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def cached(cfg: DataConfig, name: str, source: Path, fingerprint: str, build: Callable[[], ImageData],
           *, disk: bool = True) -> ImageData:
    """``build()``, unless this process or the disk cache already holds the result for this fingerprint."""
    key = (name, str(source.resolve()))
    hit = _MEMORY.get(key)
    if hit is not None and hit[0] == fingerprint:
        _MEMORY.move_to_end(key)
        return hit[1]
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{name}|{key[1]}|{fingerprint}".encode()).hexdigest()[:20]
    folder = cfg.resolved_cache_dir() / f"{name}-{digest}"
    data = _read_disk_cache(folder, name) if disk else None
    if data is None:
        data = build()
        if disk:
            _write_disk_cache(folder, data, str(source))
    _MEMORY[key] = (fingerprint, data)
    while len(_MEMORY) > _MEMORY_SLOTS:
        _MEMORY.popitem(last=False)
    return data


def _read_disk_cache(folder: Path, name: str) -> ImageData | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {a: torch.from_numpy(np.load(folder / f"{a}.npy", allow_pickle=False)) for a in _ARRAYS}
        if meta["version"] != _CACHE_VERSION or [list(arrays[a].shape) for a in _ARRAYS] != meta["shapes"]:
            return None
        return ImageData(name, classes=tuple(meta["classes"]), mean=tuple(meta["mean"]),
                         std=tuple(meta["std"]), **arrays)
    except (OSError, ValueError, KeyError, TypeError):  # absent, partial or foreign: decode again
        return None


def _write_disk_cache(folder: Path, data: ImageData, source: str) -> None:
    """Write the arrays, then meta.json last: a cache entry counts only once meta.json exists.
    Every file is written under a temporary name and renamed, so readers never see half a file."""
    meta = {"version": _CACHE_VERSION, "source": source, "classes": list(data.classes),
            "mean": list(data.mean), "std": list(data.std),
            "shapes": [list(getattr(data, a).shape) for a in _ARRAYS]}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for array in _ARRAYS:
            atomic_write(folder / f"{array}.npy", functools.partial(_save_npy, array=getattr(data, array).numpy()))
        atomic_write(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta)))
    except OSError:
        pass  # a read-only or full cache directory only costs speed


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, array, allow_pickle=False)
