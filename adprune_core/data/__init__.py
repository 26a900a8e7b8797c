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

This module is the package's public surface; each job has its own module:
``images`` (ImageData, subsets, the held-out split), ``loader`` (DeviceLoader), ``catalog`` (DATASETS,
load_dataset), one module per source (``synthetic``, ``cifar``, ``tinyimagenet``, ``imagefolder``),
and what the sources share: ``filetree`` (reading and decoding files in a folder or zip), ``download``,
``cache`` and ``messages``.
"""

from __future__ import annotations

from adprune_core.data.catalog import DATASETS, load_dataset
from adprune_core.data.images import ImageData, hold_out
from adprune_core.data.loader import DeviceLoader

__all__ = ["DATASETS", "ImageData", "load_dataset", "DeviceLoader", "hold_out"]
