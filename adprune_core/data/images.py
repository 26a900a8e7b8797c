"""A dataset in memory (``ImageData``) and the pure operations on it: channel statistics, seeded
class-balanced subsets, and holding a fraction of the training images out as the validation split.

Images are (N, 3, H, W) uint8 CPU tensors and labels (N,) int64; nothing here modifies a tensor it is
given (every subset is a new tensor). All randomness comes from ``derive_seed`` of integer streams, so
a result depends only on its inputs and seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from adprune_core.errors import DataError

HOLDOUT_STREAM = 3  # derive_seed stream of the held-out split (1 and 2 pick the subsets)


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


def image_data(name: str, train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
               val_labels: torch.Tensor, classes: tuple[str, ...]) -> ImageData:
    """An ImageData whose mean/std are computed from ``train_images``."""
    mean, std = channel_stats(train_images)
    return ImageData(name, train_images.contiguous(), train_labels.to(torch.int64), val_images.contiguous(),
                     val_labels.to(torch.int64), classes, mean, std)


def hold_out(data: ImageData, fraction: float, seed: int) -> ImageData:
    """``data`` with ``round(fraction * N)`` of its N training images moved to a validation split.

    The held-out images are drawn at random, fixed by ``seed``, round-robin over the classes
    (``balanced_subset``: class counts differ by at most one while a class has images left); the rest
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
    val_idx = balanced_subset(data.train_labels, size, derive_seed(seed, HOLDOUT_STREAM))
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return replace(data, train_images=data.train_images[keep].contiguous(), train_labels=data.train_labels[keep],
                   val_images=data.train_images[val_idx].contiguous(), val_labels=data.train_labels[val_idx],
                   test_images=data.val_images, test_labels=data.val_labels)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
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


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, so (seed, epoch) pairs never collide like seed + epoch would."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))
