"""Where and how the trainer computes: device, autocast dtype, memory layout, learning rate, optimizer, top-1.

Plain helpers the loop (``adprune_core.trainer``), the snapshot key (``adprune_core.snapshots``) and the
benchmark share; nothing here holds state. ``learning_rate`` runs on the global epoch clock (``t`` in
epochs since the start of the run), so a resumed or forked run continues the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adprune_core.config import TrainConfig
from adprune_core.data import DeviceLoader, ImageData
from adprune_core.errors import ConfigError
from adprune_core.records import EpochRecord, PruneEvent

EVAL_BATCH = 512  # images per evaluation batch (validation and test)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; a CUDA device asked for where there is none: ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available here; "
                          "use train.device=cpu or auto")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 under ``amp=auto`` on GPUs that support it, under ``amp=bf16`` anywhere; else None."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def uses_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """NHWC layout: ``on``, or ``auto`` on CUDA (tensor cores prefer it; CPUs gain little)."""
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def learning_rate(cfg: TrainConfig, t: float) -> float:
    """Learning rate at global training time ``t`` in epochs (0 <= t < cfg.epochs)."""
    if cfg.warmup_epochs and t < cfg.warmup_epochs:
        return cfg.lr * (t + 1e-3) / cfg.warmup_epochs
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        passed = sum(1 for m in cfg.lr_milestones if t >= m * cfg.epochs)
        return cfg.lr * cfg.lr_gamma ** passed
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (t - cfg.warmup_epochs) / span))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over ``model``'s parameters as they are now (rebuilt after every cut)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (a fraction) of ``model`` in eval mode over ``loader``, whose batches are fed as they
    come: an NHWC network wants a loader with ``memory_format=torch.channels_last``. The mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            correct += (model(x).argmax(1) == y).sum()
    model.train(was_training)
    return int(correct) / max(loader.num_samples, 1)


def test_top1(forward: nn.Module, data: ImageData, val_top1: float, amp_dtype: torch.dtype | None,
              layout: torch.memory_format) -> float:
    """Top-1 of the final network (``forward``) on the dataset's evaluation split: measured here when the
    validation split was held out of training, else ``val_top1`` (the same images, the same network)."""
    if not data.held_out or data.test_images is None or data.test_labels is None:
        return float(val_top1)
    device = next(forward.parameters()).device
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=EVAL_BATCH, device=device,
                          mean=data.mean, std=data.std, train=False, memory_format=layout)
    return evaluate(forward, loader, amp_dtype)


def describe_data(data: ImageData) -> dict[str, Any]:
    """The dataset as ``summary.json`` records it: name, classes, image shape, split sizes, the validation split."""
    desc = {"name": data.name, "num_classes": data.num_classes, "image_shape": list(data.image_shape),
            "train_size": int(data.train_labels.shape[0]), "val_size": int(data.val_labels.shape[0]),
            "val_split": "held out of the training images" if data.held_out else "the dataset's evaluation split"}
    if data.test_labels is not None:
        desc["test_size"] = int(data.test_labels.shape[0])
    return desc


def epoch_line(total_epochs: int, record: EpochRecord, events: Sequence[PruneEvent]) -> str:
    """The progress line of one epoch (and of its cut, when the last of ``events`` was made after it)."""
    pruned = ""
    if events and events[-1].epoch == record.epoch:
        e = events[-1]
        pruned = (f"  pruned: params {e.params_before / 1e6:.2f}M -> {e.params_after / 1e6:.2f}M, "
                  f"val right after the cut {e.val_top1_after_cut:.3f}")
    return (f"epoch {record.epoch:>3}/{total_epochs}  loss {record.train_loss:.4f}  "
            f"train {record.train_top1:.3f}  val {record.val_top1:.3f}  "
            f"params {record.params / 1e6:.2f}M  flops {record.flops / 1e9:.3f}G  {record.seconds:.1f}s{pruned}")
