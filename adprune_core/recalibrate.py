"""Batch-norm recalibration after a cut: re-estimate running statistics for the network as it is now.

A cut removes input channels of every layer downstream of a pruned group, so each batch-norm layer
after it sees another distribution than the one its running mean and variance describe. Evaluated with
the inherited statistics, a freshly cut network scores near chance; training fixes the statistics
within an epoch (momentum 0.1 per step), but anything measured before that (an evaluation right after
the cut, a short run's last epochs) is biased.

``recalibrate_batchnorm`` resets every tracking batch-norm layer and re-estimates its statistics as the
cumulative average (``momentum=None``) over the given batches, with only the batch-norm layers in
train mode (dropout stays off) and without gradients, so no weight changes. It draws no random
numbers: the batches (the caller chooses them, seeded) fully decide the result.

``recalibrate_after_cut`` is the trainer's use of it: ``prune.bn_images`` training images, unaugmented,
chosen by a generator of their own (seed ``train.seed * BN_SEED_STRIDE + epoch``: the global RNG, and so
every later epoch of the run, is untouched).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from adprune_core.config import Config
from adprune_core.data import DeviceLoader, ImageData

BN_SEED_STRIDE = 1_000_003  # the BN-recalibration images of epoch e: generator seed train.seed * stride + e


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
                          amp_dtype: torch.dtype | None = None) -> int:
    """Re-estimate ``model``'s batch-norm running statistics on ``batches`` (in place); returns the images seen.

    ``batches`` yields input tensors (N, C, H, W), or tuples whose first item is one (a loader's
    (images, labels)). Layers without running statistics are left alone; every module's train/eval mode
    and every batch-norm layer's ``momentum`` are restored afterwards. With no batch-norm layer, or no
    batches, nothing changes and 0 is returned.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    device = next(model.parameters()).device
    saved = [tuple(t.clone() for t in _statistics(bn)) for bn in layers]
    seen = 0
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches, not an exponential one
        bn.train()
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                model(x)
            seen += len(x)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    if seen == 0:  # nothing to estimate from: keep what the layers had
        for bn, old in zip(layers, saved):
            for now, before in zip(_statistics(bn), old):
                now.copy_(before)
    return seen


def _statistics(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tracking batch-norm layer's running mean, variance and batch count."""
    mean, var, count = bn.running_mean, bn.running_var, bn.num_batches_tracked
    if mean is None or var is None or count is None:
        raise ValueError(f"{bn} tracks no running statistics")
    return mean, var, count


def recalibrate_after_cut(model: nn.Module, cfg: Config, data: ImageData, epoch: int, like: DeviceLoader,
                          amp_dtype: torch.dtype | None) -> int:
    """Re-estimate the batch-norm statistics of ``model`` (cut after ``epoch``) on ``prune.bn_images``
    training images (module docstring), batched as ``train.batch_size`` on ``like``'s device and memory
    layout; returns the images used (their forward FLOPs count as training compute: the caller adds them)."""
    n = len(data.train_labels)
    gen = torch.Generator().manual_seed(cfg.train.seed * BN_SEED_STRIDE + epoch)
    idx = torch.randperm(n, generator=gen)[:min(cfg.prune.bn_images, n)].sort().values
    loader = DeviceLoader(data.train_images[idx], data.train_labels[idx], batch_size=cfg.train.batch_size,
                          device=like.device, mean=data.mean, std=data.std, train=False,
                          memory_format=like.memory_format)
    return recalibrate_batchnorm(model, loader, amp_dtype)
