"""Image datasets as in-memory uint8 tensors, and a batch loader that augments on the device.

- ``load_dataset(cfg)`` returns an ``ImageData``: train/val (and, with a held-out split, test) images as
  (N, 3, H, W) uint8 CPU tensors, int64 labels, class names, and the per-channel mean/std of the training
  images. The dataset is chosen by ``cfg.name`` through the ``DATASETS`` registry (cifar10, cifar100,
  tinyimagenet, imagefolder, synthetic); ``cfg.train_size``/``cfg.val_size`` then pick a seeded,
  class-balanced subset, and ``cfg.holdout`` holds a seeded, class-balanced fraction of the training
  images out as the validation split (the dataset's own evaluation split becomes the test split).
- ``DeviceLoader`` moves those uint8 tensors to the device once and yields normalised float32 batches;
  shuffling, random crop and flip are vectorised over the batch, with no per-image Python work and no
  host-device sync per batch.

Decoded image files (tinyimagenet, imagefolder) are cached in this process and on disk under
``cfg.resolved_cache_dir()`` as .npy arrays plus a JSON file, keyed by the source's path, size and
modification time; an Optuna study that loads the same data once per trial decodes it only once.
Every problem a user can cause (missing files, bad layout, corrupt image) raises a one-line
``DataError`` that names the path, the rule and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pickle
import urllib.request
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adprune_core.config import DATA_ROOT_ENV, DataConfig
from adprune_core.errors import DataError
from adprune_core.files import atomic_write
from adprune_core.registry import Registry

_T = TypeVar("_T")

__all__ = ["DATASETS", "ImageData", "load_dataset", "DeviceLoader"]


@dataclass(frozen=True, eq=False)
class ImageData:
    """A classification dataset held in memory.

    Images are (N, 3, H, W) uint8 CPU tensors, labels (N,) int64 in [0, num_classes); ``classes[k]``
    names label k. ``mean``/``std`` are per-channel statistics of the training images scaled to [0, 1].
    The tensors may be shared with the in-process cache: treat them as read-only.

    ``val_*`` is the split ``val_top1`` measures. ``test_*`` is set only when ``val_*`` was held out of the
    training images (``data.holdout``): it is then the dataset's own evaluation split, which only
    ``test_top1`` reads. Without it (``test_images is None``) ``val_*`` *is* that evaluation split.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def held_out(self) -> bool:
        """Whether ``val_*`` was held out of the training images (and ``test_*`` is the evaluation split)."""
        return self.test_images is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train_images.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        test = f", test={len(self.test_labels)}" if self.test_labels is not None else ""
        return (f"ImageData({self.name!r}, train={len(self.train_labels)}, val={len(self.val_labels)}{test}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")


DATASETS: Registry[Callable[[DataConfig], ImageData]] = Registry("dataset", "data.name")


def load_dataset(cfg: DataConfig) -> ImageData:
    """Load ``cfg.name``, keep ``cfg.train_size``/``cfg.val_size`` images of each split (0 = all), then hold
    ``cfg.holdout`` of the kept training images out as the validation split (``hold_out``).

    The subsets are random but fixed by ``cfg.seed`` and as class-balanced as the labels allow;
    mean/std stay those of the full training set (pixel statistics, no labels; the evaluation split never
    contributes). Asking for more images than a split has is a DataError. The registry's (cached) tensors
    are never modified: every subset is a new tensor.
    """
    data = DATASETS.get(cfg.name)(cfg)
    picked = {}
    for split, size, stream in (("train", cfg.train_size, 1), ("val", cfg.val_size, 2)):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if size > len(labels):
            raise DataError(f"data.{split}_size: {size} is more than the {len(labels)} {split} images of "
                            f"{data.name}; use at most {len(labels)}, or 0 for all")
        if 0 < size < len(labels):
            idx = _balanced_subset(labels, size, _derive_seed(cfg.seed, stream))
            picked[f"{split}_images"] = images[idx].contiguous()
            picked[f"{split}_labels"] = labels[idx]
    data = replace(data, **picked) if picked else data
    return hold_out(data, cfg.holdout, cfg.seed) if cfg.holdout > 0 else data


HOLDOUT_STREAM = 3  # _derive_seed stream of the held-out split (1 and 2 pick the subsets)


def hold_out(data: ImageData, fraction: float, seed: int) -> ImageData:
    """``data`` with ``round(fraction * N)`` of its N training images moved to a validation split.

    The held-out images are drawn at random, fixed by ``seed``, round-robin over the classes
    (``_balanced_subset``: class counts differ by at most one while a class has images left); the rest
    stay training images, in their order. ``data``'s validation split becomes the test split. ``data``
    is not modified. A DataError when either part would be empty.
    """
    if data.held_out:
        raise ValueError("hold_out: this data already has a held-out validation split")
    n = len(data.train_labels)
    size = math.floor(fraction * n + 0.5)
    if not 0 < size < n:
        raise DataError(f"data.holdout: {fraction} of {n} training images of {data.name} holds out {size}; "
                        "both the held-out and the training part need at least one image: use a fraction in "
                        "(0, 0.5] of a larger data.train_size, or 0 for no held-out split")
    val_idx = _balanced_subset(data.train_labels, size, _derive_seed(seed, HOLDOUT_STREAM))
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return replace(data, train_images=data.train_images[keep].contiguous(), train_labels=data.train_labels[keep],
                   val_images=data.train_images[val_idx].contiguous(), val_labels=data.train_labels[val_idx],
                   test_images=data.val_images, test_labels=data.val_labels)


# --- the device loader -----------------------------------------------------------------------------

class DeviceLoader:
    """Iterates (images, labels) batches from uint8 images that live on ``device``.

    ``images`` (N, C, H, W) uint8 and ``labels`` (N,) are copied to ``device`` once, here; the inputs are
    not modified. Each batch is (B, C, H, W) float32, normalised as ``(x / 255 - mean) / std``, and (B,)
    int64 labels. ``train=True`` shuffles every epoch and, when ``augment``, applies a random crop with
    ``crop_padding`` zero pixels on each side and a horizontal flip with p=0.5, all on the device and
    vectorised over the batch. ``train=False`` yields the images in order, unaugmented. Randomness comes
    from a CPU generator seeded by (``seed``, epoch), so the batches are the same on every device; the
    epoch counts the ``iter()`` calls so far (``set_epoch`` sets it, e.g. when resuming). Batches come in
    ``memory_format`` (``torch.channels_last`` for an NHWC network), made in that layout, not copied to it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 device: torch.device | str, mean: Sequence[float], std: Sequence[float], train: bool,
                 augment: bool = True, crop_padding: int = 4, seed: int = 0, drop_last: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if batch_size < 1 or crop_padding < 0:
            raise ValueError(f"need batch_size >= 1 and crop_padding >= 0, got {batch_size}, {crop_padding}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per channel), got {mean}, {std}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.train, self.augment = batch_size, train, train and augment
        self.crop_padding, self.seed, self.drop_last = crop_padding, seed, drop_last
        self.memory_format = memory_format
        self.epoch = 0
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        _, c, h, w = images.shape
        self._channel_idx = torch.arange(c, device=self.device).view(1, c, 1, 1)
        self._row_idx = torch.arange(h, device=self.device)
        self._col_idx = torch.arange(w, device=self.device)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (0-based) of this loader's random sequence."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._eval_batches() if not self.train else self._train_batches(epoch)

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            yield self._normalise(self.images[start:start + b]), self.labels[start:start + b]

    def _train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # All random numbers of the epoch are drawn up front on the CPU and moved once: no per-batch
        # transfers, and identical batches on every device.
        n, b, p = self.num_samples, self.batch_size, self.crop_padding
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen).to(self.device)
        if self.augment:
            offsets = torch.randint(0, 2 * p + 1, (2, n), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        for start in range(0, len(self) * b, b):
            idx = order[start:start + b]
            x = self.images[idx]
            if self.augment:
                x = self._crop_flip(x, offsets[:, start:start + b], flips[start:start + b])
            yield self._normalise(x), self.labels[idx]

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop each (zero-padded) image at its own (row, col) offset in [0, 2p]; mirror where ``flips``."""
        p = self.crop_padding
        if p:
            x = F.pad(x, (p, p, p, p))
        rows = offsets[0, :, None] + self._row_idx                       # (B, H)
        cols = offsets[1, :, None] + self._col_idx                       # (B, W)
        cols = torch.where(flips[:, None], cols.flip(1), cols)          # a flip reads columns backwards
        batch_idx = torch.arange(len(x), device=x.device).view(-1, 1, 1, 1)
        return x[batch_idx, self._channel_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32, memory_format=self.memory_format).div_(255).sub_(self._mean).div_(self._std)


# --- datasets --------------------------------------------------------------------------------------

@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> ImageData:
    """Learnable but not trivial toy data, deterministic from ``cfg.seed`` and generated in well under 1 s.

    Each of ``cfg.num_classes`` classes has a smooth random colour pattern (a 4x4 grid upsampled
    bilinearly) mixed with a pattern shared by all classes; an image is its class pattern, shifted by up
    to 1/4 of the side, times a random brightness, plus pixel noise. A small CNN gets ~60-90% val
    accuracy (10 classes) after 2-4 epochs; the nearest class mean gets ~55%. Sizes: ``cfg.train_size``
    and ``cfg.val_size``, 2000 and 500 when 0. Labels are balanced (counts differ by at most one).
    """
    k, side = cfg.num_classes, cfg.image_size
    shift = max(1, side // 4)
    gen = torch.Generator().manual_seed(_derive_seed(cfg.seed, 0))
    grids = torch.rand(k, 3, 4, 4, generator=gen)
    patterns = F.interpolate(grids, size=(side + 2 * shift,) * 2, mode="bilinear", align_corners=False)
    patterns = 0.3 * patterns + 0.7 * patterns.mean(0, keepdim=True)  # mostly shared: not trivial

    def split(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(_derive_seed(cfg.seed, stream))
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        off = torch.randint(0, 2 * shift + 1, (2, n), generator=g)
        rows = off[0, :, None] + torch.arange(side)
        cols = off[1, :, None] + torch.arange(side)
        x = patterns[labels.view(-1, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                     rows[:, None, :, None], cols[:, None, None, :]]
        brightness = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
        x = 255 * x * brightness + 50 * torch.randn(n, 3, side, side, generator=g)
        return x.round_().clamp_(0, 255).to(torch.uint8), labels

    train_x, train_y = split(cfg.train_size or 2000, 1)
    val_x, val_y = split(cfg.val_size or 500, 2)
    return _image_data("synthetic", train_x, train_y, val_x, val_y, tuple(f"class{i}" for i in range(k)))


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


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> ImageData:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (the official python pickles); val = the test batch."""
    return _load_cifar(cfg, "cifar10")


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> ImageData:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/``; val = the test split."""
    return _load_cifar(cfg, "cifar100")


def _load_cifar(cfg: DataConfig, name: str) -> ImageData:
    # The pickles are read here rather than through torchvision's dataset classes, which refuse files
    # whose md5 differs from the official one; torchvision is only used to download.
    layout, root = _CIFAR[name], cfg.resolved_root()
    if not root.exists() and not cfg.download:
        _raise_missing_root(root, f"{layout.folder}/ (extracted from {layout.title}'s python tarball)")
    folder = root / layout.folder
    files = [folder / f for f in (*layout.train_files, *layout.test_files, layout.meta_file)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        _download_cifar(cfg, name, layout, root, missing[0])
    fingerprint = ";".join(f"{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return _cached(cfg, name, folder, fingerprint, lambda: _read_cifar(name, layout, folder), disk=False)


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

    _download_or_explain(cfg, fetch, where, fix)


def _download_or_explain(cfg: DataConfig, fetch: Callable[[], _T], where: str, fix: str) -> _T:
    """Run ``fetch`` when ``cfg.download`` allows it; any failure becomes one DataError line."""
    if not cfg.download:
        raise DataError(f"{where} and data.download is false; {fix}")
    try:
        return fetch()
    except Exception as exc:  # offline, HTTP, disk, checksum and archive errors all mean "not available"
        raise DataError(f"{where} and the download failed ({_one_line(exc)}); {fix}") from None


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
        raise DataError(f"{name}: '{path}' is not a valid {title} file ({_one_line(exc)}); delete "
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

    return _image_data(name, *split(layout.train_files), *split(layout.test_files), classes)


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@DATASETS.register("tinyimagenet")
def tinyimagenet(cfg: DataConfig) -> ImageData:
    """TinyImageNet-200 in its official layout, read from the folder or straight from the zip.

    ``data.root`` may be the ``tiny-imagenet-200/`` folder, a folder containing it, a folder containing
    ``tiny-imagenet-200*.zip``, or the zip itself. Class order is that of ``wnids.txt``, class names come
    from ``words.txt`` (first synonym) when present; val labels come from ``val/val_annotations.txt``.
    """
    root = cfg.resolved_root()
    source = _find_tinyimagenet(root, cfg.download)
    if source is None:
        where = (f"tinyimagenet: no TinyImageNet in '{root.absolute()}' (looked for tiny-imagenet-200/"
                 f"wnids.txt and tiny-imagenet-200*.zip)")
        fix = (f"download {TINY_IMAGENET_URL} into that folder (no need to unzip it), or set data.root "
               f"(or ${DATA_ROOT_ENV}) to the folder or zip")
        source = _download_or_explain(cfg, lambda: _download(TINY_IMAGENET_URL, root / "tiny-imagenet-200.zip"),
                                      where, fix)
    with _Tree(source) as tree:
        return _cached(cfg, "tinyimagenet", tree.path, tree.fingerprint, lambda: _read_tinyimagenet(tree))


def _find_tinyimagenet(root: Path, download: bool) -> Path | None:
    if root.is_file():
        return root
    if not root.exists():
        if download:
            return None
        _raise_missing_root(root, "the TinyImageNet folder or zip")
    for folder in (root, root / "tiny-imagenet-200"):
        if (folder / "wnids.txt").is_file():
            return folder
    zips = sorted(root.glob("tiny-imagenet-200*.zip"), key=lambda p: (p.name != "tiny-imagenet-200.zip", p.name))
    return zips[0] if zips else None


def _read_tinyimagenet(tree: _Tree) -> ImageData:
    where = f"tinyimagenet: '{tree.path}'"
    wnid_files = sorted((n for n in tree.names if n.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
    if not wnid_files:
        raise DataError(f"{where} has no wnids.txt; expected the official layout tiny-imagenet-200/"
                        "{wnids.txt,train/,val/}: use the official zip or its extracted folder")
    base = wnid_files[0][: -len("wnids.txt")]
    wnids = tree.read_text(wnid_files[0]).split()
    index = {w: i for i, w in enumerate(wnids)}
    names: dict[str, str] = {}
    if base + "words.txt" in tree.name_set:
        names = dict(_wnid_and_name(line) for line in tree.read_text(base + "words.txt").splitlines() if "\t" in line)
    classes = tuple(names.get(w, w) for w in wnids)

    train = []  # (label, file name), sorted below into class order
    for name in tree.names:
        parts = name[len(base):].split("/")
        if name.startswith(base + "train/") and len(parts) == 4 and parts[2] == "images" and _is_image(name):
            if parts[1] not in index:
                raise DataError(f"{where}: train folder '{parts[1]}' is not listed in wnids.txt; add it "
                                "there or remove the folder")
            train.append((index[parts[1]], name))

    annotations = base + "val/val_annotations.txt"
    if annotations not in tree.name_set:
        raise DataError(f"{where} has no {annotations}; expected the official val/ folder with its annotations")
    val_files, val_labels = [], []
    for line in tree.read_text(annotations).splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index or base + "val/images/" + fields[0] not in tree.name_set:
            raise DataError(f"{where}: {annotations} line {line!r} does not name an existing val/images/ file "
                            "and a wnid from wnids.txt; fix the line or use the official files")
        val_files.append(base + "val/images/" + fields[0])
        val_labels.append(index[fields[1]])
    train_labels, train_files = zip(*sorted(train), strict=True) if train else ((), ())
    if not train_files or not val_files:
        raise DataError(f"{where} has {len(train_files)} train and {len(val_files)} val images; both must "
                        "be non-empty (train/<wnid>/images/*.JPEG, val/images/*.JPEG)")
    return _image_data("tinyimagenet", _decode(tree, list(train_files), "tinyimagenet train"),
                       torch.tensor(train_labels), _decode(tree, val_files, "tinyimagenet val"),
                       torch.tensor(val_labels), classes)


def _wnid_and_name(line: str) -> tuple[str, str]:
    """``n01443537\\tgoldfish, Carassius auratus`` -> (``n01443537``, ``goldfish``)."""
    wnid, words = line.split("\t", 1)
    return wnid.strip(), words.split(",")[0].strip()


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> ImageData:
    """Class folders in a folder or zip: ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``).

    The splits may sit under one top-level folder (``cifar10-jpeg/train/...``). Classes are the sorted
    train subfolder names; val classes must be among them. All images must have one size.
    """
    root = cfg.resolved_root()
    if not root.exists():
        _raise_missing_root(root, "a folder or zip with train/<class>/ and val/<class>/ (or test/)")
    with _Tree(root) as tree:
        return _cached(cfg, "imagefolder", tree.path, tree.fingerprint, lambda: _read_imagefolder(tree))


def _read_imagefolder(tree: _Tree) -> ImageData:
    where = f"imagefolder: '{tree.path}'"
    tops = sorted({n.split("/", 1)[0] for n in tree.names if "/" in n})
    if any(n.startswith("train/") for n in tree.names):
        base = ""
    elif len(tops) == 1 and any(n.startswith(f"{tops[0]}/train/") for n in tree.names):
        base = tops[0] + "/"
    else:
        raise DataError(f"{where} has no train/ folder (top-level folders: {', '.join(tops) or 'none'}); "
                        "expected train/<class>/<image> and val/<class>/<image> or test/..., "
                        "directly or under one top-level folder")

    def files(split: str) -> list[tuple[str, str]]:
        """(class, file name) of every image below ``split/<class>/``, in class order."""
        prefix = base + split + "/"
        return sorted((n[len(prefix):].split("/", 1)[0], n) for n in tree.names
                      if n.startswith(prefix) and n.count("/", len(prefix)) >= 1 and _is_image(n))

    train = files("train")
    val_split, val = next(((s, v) for s in ("val", "test") if (v := files(s))), (None, []))
    if not train or val_split is None:
        raise DataError(f"{where}: found {len(train)} train images and no images in val/ or test/; "
                        "expected <class>/<image> folders (jpg, png, ...) under train/ and val/ (or test/)")
    classes = tuple(sorted({c for c, _ in train}))
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({c for c, _ in val} - set(classes))
    if extra:
        raise DataError(f"{where}: {val_split}/ class '{extra[0]}' has no train/ folder; every "
                        f"{val_split} class must also be a train class: add train/{extra[0]}/ or remove it")

    def decode(items: list[tuple[str, str]], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
        return _decode(tree, [n for _, n in items], f"imagefolder {split}"), labels

    return _image_data("imagefolder", *decode(train, "train"), *decode(val, val_split), classes)


# --- reading files ---------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(_IMAGE_SUFFIXES)


class _Tree:
    """A folder or a zip, read-only: sorted '/'-separated file names relative to it, and their bytes.

    ``fingerprint`` changes when the content may have: a zip's size and mtime, a folder's file count,
    total size and newest mtime. Every file that cannot be read (a zip member with a bad CRC or a
    corrupt deflate stream, a dangling symbolic link, a file without read permission) is a one-line
    ``DataError`` naming it: the one place where archive and file-system errors become user errors.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self._zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"data.root: '{self.path}' is not a readable zip file ({_one_line(exc)}); "
                                "point data.root at a folder or a valid .zip") from None
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
            stat = path.stat()
            self.fingerprint = f"zip:{stat.st_size}:{stat.st_mtime_ns}"
        else:
            names, total, newest = [], 0, 0
            for folder, _, filenames in os.walk(path):
                for filename in filenames:
                    full = os.path.join(folder, filename)
                    try:
                        stat = os.stat(full)
                    except OSError as exc:
                        raise self._unreadable(os.path.relpath(full, path), exc) from None
                    names.append(os.path.relpath(full, path).replace(os.sep, "/"))
                    total, newest = total + stat.st_size, max(newest, stat.st_mtime_ns)
            self.names = sorted(names)
            self.fingerprint = f"dir:{len(names)}:{total}:{newest}"
        self.name_set = set(self.names)

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            # BadZipFile: a bad CRC-32; zlib.error: a corrupt deflate stream; EOFError: a cut-off member;
            # NotImplementedError: an unsupported compression; RuntimeError: an encrypted member
            raise self._unreadable(name, exc) from None

    def _unreadable(self, name: str, exc: BaseException) -> DataError:
        if self._zip is not None:
            return DataError(f"data.root: cannot read '{name}' from the zip '{self.path}' ({_one_line(exc)}); the zip "
                             "is damaged: download or build it again, or point data.root at a sound copy")
        full = self.path / name
        if full.is_symlink() and not full.exists():
            return DataError(f"data.root: '{full}' is a symbolic link to '{os.readlink(full)}', which does not "
                             "exist; fix the link or delete it")
        return DataError(f"data.root: cannot read '{full}' ({_one_line(exc)}); make it readable or delete it")

    def read_text(self, name: str) -> str:
        return self.read(name).decode("utf-8", errors="replace")

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip is not None:
            self._zip.close()


def _decode(tree: _Tree, names: list[str], what: str) -> torch.Tensor:
    """Decode ``names`` from ``tree`` as RGB into one (N, 3, H, W) uint8 tensor; all must share one size."""
    from torchvision.io import ImageReadMode, decode_image

    out: torch.Tensor | None = None
    # Serial on purpose: decoding a small JPEG takes ~20 us, and threads only add GIL contention.
    with warnings.catch_warnings(), tqdm(total=len(names), desc=f"decoding {what}", unit="img",
                                         disable=None, leave=False) as bar:
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # torchvision 0.29+
        for i, name in enumerate(names):
            try:
                raw = torch.frombuffer(bytearray(tree.read(name)), dtype=torch.uint8)
                image = decode_image(raw, mode=ImageReadMode.RGB)
            except (RuntimeError, ValueError) as exc:
                raise DataError(f"{what}: cannot decode '{name}' in '{tree.path}' ({_one_line(exc)}); "
                                "replace or delete that file") from None
            if image.dim() != 3:  # (frames, C, H, W): an animated GIF or WebP
                raise DataError(f"{what}: '{name}' in '{tree.path}' is an animation of {image.shape[0]} frames, "
                                "not a still image; save its first frame as PNG or JPEG, or delete it")
            if out is None:
                out = torch.empty((len(names), *image.shape), dtype=torch.uint8)
            elif image.shape != out.shape[1:]:
                raise DataError(f"{what}: '{name}' in '{tree.path}' is {image.shape[2]}x{image.shape[1]} "
                                f"pixels but the first image is {out.shape[3]}x{out.shape[2]}; all images "
                                "must have one size: resize them first")
            out[i] = image
            if i % 512 == 511:
                bar.update(512)
        bar.update(len(names) - bar.n)
    assert out is not None, "callers pass at least one file"
    return out


def _download(url: str, dest: Path) -> Path:
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


# --- caching ---------------------------------------------------------------------------------------

_CACHE_VERSION = 1
_MEMORY: OrderedDict[tuple[str, str], tuple[str, ImageData]] = OrderedDict()
_MEMORY_SLOTS = 2  # full datasets are large: keep the most recent two
_ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def _cached(cfg: DataConfig, name: str, source: Path, fingerprint: str, build: Callable[[], ImageData],
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


# --- small helpers ---------------------------------------------------------------------------------

def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temporary name
        np.save(f, array, allow_pickle=False)


def _image_data(name: str, train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
                val_labels: torch.Tensor, classes: tuple[str, ...]) -> ImageData:
    """An ImageData whose mean/std are computed from ``train_images``."""
    mean, std = _channel_stats(train_images)
    return ImageData(name, train_images.contiguous(), train_labels.to(torch.int64), val_images.contiguous(),
                     val_labels.to(torch.int64), classes, mean, std)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1], rounded to 4 decimals."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):  # bounded float32 temporaries
        x = chunk.float()
        total += x.sum((0, 2, 3), dtype=torch.float64)
        squares += x.square().sum((0, 2, 3), dtype=torch.float64)
    count = images.numel() / images.shape[1]
    mean = total / count / 255
    std = (squares / count / 255**2 - mean**2).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: leave its scale alone
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``size`` samples drawn at random (fixed by ``seed``), round-robin over classes:
    every class gets ``size // num_classes`` or one more while it has samples left."""
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    by_class = torch.sort(shuffled, stable=True).indices        # positions grouped by class, random within
    counts = torch.bincount(shuffled)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(n) - starts[shuffled[by_class]]  # position within its class
    take = torch.argsort(rank * n + torch.arange(n))[:size]     # all rank-0 samples, then rank 1, ...
    return torch.sort(perm[take]).values


def _derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, so (seed, epoch) pairs never collide like seed + epoch would."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _one_line(exc: BaseException) -> str:
    name = type(exc).__name__
    name = f"{type(exc).__module__}.{name}" if name == "error" else name  # zlib.error, not a bare "error"
    text = " ".join(str(exc).split())
    return f"{name}: {text[:200]}" if text else name


def _raise_missing_root(root: Path, expected: str) -> None:
    raise DataError(f"data.root: '{root.absolute()}' does not exist; put {expected} there, or set data.root "
                    f"(or ${DATA_ROOT_ENV}) to where the data is")
