"""``DeviceLoader``: batches from uint8 images that live on the device, augmented there.

The images are copied to the device once; every batch is normalised float32, and shuffling, random
crop and flip are vectorised over the batch: no per-image Python work and no host-device sync per
batch. The random sequence depends only on (seed, epoch), not on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from adprune_core.data.images import derive_seed


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
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
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
