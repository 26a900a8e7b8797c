"""The dataset catalog: ``DATASETS`` maps each ``data.name`` to its loader, and ``load_dataset`` loads one.

A loader takes the ``DataConfig`` and returns the whole dataset as an ``ImageData`` (possibly shared
with the cache: never modified here). ``load_dataset`` then keeps the configured subset of each split
and holds the configured fraction of the training images out as the validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from adprune_core.data.cifar import cifar10, cifar100
from adprune_core.data.imagefolder import imagefolder
from adprune_core.data.images import ImageData, balanced_subset, derive_seed, hold_out
from adprune_core.data.synthetic import synthetic
from adprune_core.data.tinyimagenet import tinyimagenet
from adprune_core.errors import DataError
from adprune_core.registry import Registry
from adprune_core.sections import DataConfig

DATASETS: Registry[Callable[[DataConfig], ImageData]] = Registry("dataset", "data.name")
for _name, _loader in {"synthetic": synthetic, "cifar10": cifar10, "cifar100": cifar100,
                       "tinyimagenet": tinyimagenet, "imagefolder": imagefolder}.items():
    DATASETS.register(_name)(_loader)


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
            idx = balanced_subset(labels, size, derive_seed(cfg.seed, stream))
            picked[f"{split}_images"] = images[idx].contiguous()
            picked[f"{split}_labels"] = labels[idx]
    data = replace(data, **picked) if picked else data
    return hold_out(data, cfg.holdout, cfg.seed) if cfg.holdout > 0 else data
