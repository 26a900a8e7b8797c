"""CIFAR-10 and CIFAR-100 from the official python pickles (downloaded through torchvision if missing).

The pickles are read by ``_CifarUnpickler``, which loads plain containers and numpy arrays only, so a
tampered file cannot run code. The validation split is the official test split. Decoded data is
cached in this process only (the pickles load fast).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adprune_core.data.cache import cached
from adprune_core.data.download import download_or_explain
from adprune_core.data.images import ImageData, image_data
from adprune_core.data.messages import missing_root, one_line
from adprune_core.errors import DataError
from adprune_core.sections import DATA_ROOT_ENV, DataConfig


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    torchvision_class: str  # its url/filename/md5 are used to download


_CIFAR = {
    "cifar10": _CifarLayout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            ("test_batch",), "batches.meta", "label_names", "labels", "CIFAR10"),
    "cifar100": _CifarLayout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta",
                             "fine_label_names", "fine_labels", "CIFAR100"),
}


def cifar10(cfg: DataConfig) -> ImageData:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (the official python pickles); val = the test batch."""
    return _load_cifar(cfg, "cifar10")


def cifar100(cfg: DataConfig) -> ImageData:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/``; val = the test split."""
    return _load_cifar(cfg, "cifar100")


def _load_cifar(cfg: DataConfig, name: str) -> ImageData:
    # The pickles are read here rather than through torchvision's dataset classes, which refuse files
    # whose md5 differs from the official one; torchvision is only used to download.
    layout, root = _CIFAR[name], cfg.resolved_root()
    if not root.exists() and not cfg.download:
        raise missing_root(root, f"{layout.folder}/ (extracted from {layout.title}'s python tarball)")
    folder = root / layout.folder
    files = [folder / f for f in (*layout.train_files, *layout.test_files, layout.meta_file)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        _download_cifar(cfg, name, layout, root, missing[0])
    fingerprint = ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return cached(cfg, name, folder, fingerprint, lambda: _read_cifar(name, layout, folder), disk=False)


def _download_cifar(cfg: DataConfig, name: str, layout: _CifarLayout, root: Path, missing: Path) -> None:
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    official = getattr(torchvision.datasets, layout.torchvision_class)
    where = (f"{name}: no {layout.title} files in '{root.absolute()}' "
             f"(looked for {layout.folder}/{missing.name})")
    fix = (f"download {official.url} and extract it there, or set data.root (or ${DATA_ROOT_ENV}) "
           f"to the folder that holds {layout.folder}/")

    def fetch() -> None:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(official.url, str(root), filename=official.filename, md5=official.tgz_md5)

    download_or_explain(cfg, fetch, where, fix)


class _CifarUnpickler(pickle.Unpickler):
    """Loads plain containers and numpy arrays only: a CIFAR file needs nothing else, and refusing every
    other global keeps a tampered file from running code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, name: str, title: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
        if not isinstance(entry, dict):
            raise TypeError(f"holds a {type(entry).__name__}, not a dict")
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    except Exception as exc:  # anything a truncated or foreign pickle raises
        raise DataError(f"{name}: '{path}' is not a valid {title} file ({one_line(exc)}); delete "
                        f"'{path.parent}' and download it again (data.download=true)") from None


def _read_cifar(name: str, layout: _CifarLayout, folder: Path) -> ImageData:
    meta = _read_cifar_pickle(folder / layout.meta_file, name, layout.title)
    raw_names = meta.get(layout.names_key)
    if not isinstance(raw_names, list) or not raw_names:
        raise DataError(f"{name}: '{folder / layout.meta_file}' has no '{layout.names_key}' list; delete "
                        f"'{folder}' and download it again")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names)

    def split(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = [], []
        for file in files:
            entry = _read_cifar_pickle(folder / file, name, layout.title)
            data, lab = entry.get("data"), entry.get(layout.labels_key)
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3 * 32 * 32 and isinstance(lab, list) and len(lab) == len(data)):
                raise DataError(f"{name}: '{folder / file}' does not hold 'data' (N, 3072) uint8 and "
                                f"'{layout.labels_key}' (N labels); delete '{folder}' and download it again")
            pixels.append(data)
            labels.extend(lab)
        y = torch.tensor(labels, dtype=torch.int64)
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes):
            raise DataError(f"{name}: '{folder}' has labels outside 0..{len(classes) - 1}; download the dataset again")
        # Each row is the red 32x32 plane, then green, then blue: exactly (3, 32, 32) in C order.
        return torch.from_numpy(np.concatenate(pixels).reshape(-1, 3, 32, 32)), y

    return image_data(name, *split(layout.train_files), *split(layout.test_files), classes)
