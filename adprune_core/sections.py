"""The run configuration's schema: one typed, frozen dataclass per section, and ``Config`` holding them.

Each field carries its default, its help text and its validation rules (``choices``, ``lo``, ``hi``) as
dataclass metadata; ``SECTIONS`` maps a section's name to its class. Nothing here reads files or checks
values: ``adprune_core.config`` loads and validates a ``Config``. This module depends on nothing else in
the package, so the modules whose behaviour a section configures (``data``, ``models``, ...) can take
their section type from here while ``config`` checks names against their registries.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_ROOT_ENV = "ADPRUNE_DATA"
CACHE_DIR_ENV = "ADPRUNE_CACHE"
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take 32-bit seeds; every seed here keeps to that range
MAX_CHANNELS = 8192  # the widest layer a config may ask for (512 base channels x the width_mult limit of 16)


def _opt(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
         hi: float | None = None) -> Any:
    """A dataclass field with its documentation and validation rules as metadata."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("synthetic", "dataset: cifar10, cifar100, tinyimagenet, imagefolder, synthetic")
    root: str = _opt("", f"where the data lives (folder or zip); empty = ${DATA_ROOT_ENV} or ./data")
    download: bool = _opt(True, "download cifar/tinyimagenet when missing and online")
    train_size: int = _opt(0, "images of the dataset's training split to use, the held-out ones included: 0 = all "
                              "(synthetic: 2000)", lo=0)
    val_size: int = _opt(0, "images of the dataset's own evaluation split (test/ or val/) to use: 0 = all "
                            "(synthetic: 500)", lo=0)
    holdout: float = _opt(0.0, "fraction of the training images held out (seeded by data.seed, class-balanced) as the "
                               "validation split val_top1 measures, the dataset's evaluation split then measuring "
                               "test_top1 only; 0 = none: val_top1 is the evaluation split (single runs; studies "
                               "default to 0.1)", lo=0.0, hi=0.5)
    num_classes: int = _opt(10, "synthetic only: number of classes", lo=2, hi=1000)
    image_size: int = _opt(32, "synthetic only: image side in pixels", lo=8, hi=256)
    augment: bool = _opt(True, "random crop with padding and horizontal flip on training batches")
    crop_padding: int = _opt(4, "zero padding (pixels) for the random crop; CIFAR convention is 4", lo=0, hi=64)
    cache_dir: str = _opt("", f"decoded-image cache; empty = ${CACHE_DIR_ENV} or ~/.cache/adprune")
    seed: int = _opt(0, "seed for subset selection and synthetic data", lo=0, hi=MAX_SEED)

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get(DATA_ROOT_ENV, "") or "data").expanduser()

    def resolved_cache_dir(self) -> Path:
        default = Path("~/.cache/adprune").expanduser()
        return Path(self.cache_dir or os.environ.get(CACHE_DIR_ENV, "") or default).expanduser()


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("vgg19", "vgg11, vgg13, vgg16, vgg19, resnet18, resnet34 or torchvision:<name>")
    width_mult: float = _opt(1.0, "multiplies every layer's base width", lo=0.01, hi=16.0)
    widths: tuple[int, ...] = _opt((), "base widths: vgg one per conv, resnet one per stage; () = paper's",
                                   lo=1, hi=MAX_CHANNELS)
    stem: str = _opt("auto", "resnet stem: auto (by input size), cifar, tiny, imagenet",
                     choices=("auto", "cifar", "tiny", "imagenet"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(30, "training epochs", lo=1)
    batch_size: int = _opt(128, "images per step", lo=1)
    lr: float = _opt(0.1, "peak learning rate (SGD)", lo=0.0)
    momentum: float = _opt(0.9, "SGD momentum", lo=0.0, hi=1.0)
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay", lo=0.0)
    lr_schedule: str = _opt("cosine", "cosine, step or constant, on the global epoch clock",
                            choices=("cosine", "step", "constant"))
    lr_milestones: tuple[float, ...] = _opt((0.5, 0.75), "step schedule: fractions of training")
    lr_gamma: float = _opt(0.1, "step schedule: factor at each milestone", lo=0.0, hi=1.0)
    warmup_epochs: int = _opt(0, "linear learning-rate warm-up epochs", lo=0)
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing", lo=0.0, hi=1.0)
    seed: int = _opt(0, "seed for weights, batch order, augmentation", lo=0, hi=MAX_SEED)
    device: str = _opt("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on capable GPUs), bf16, off",
                    choices=("auto", "bf16", "off"))
    channels_last: str = _opt("auto", "NHWC memory layout: auto (on for CUDA), on, off", choices=("auto", "on", "off"))
    compile: bool = _opt(False, "torch.compile the network (re-compiled after every prune)")
    cudnn_benchmark: bool = _opt(True, "let cuDNN autotune convolution algorithms (CUDA only)")
    progress: bool = _opt(True, "show a progress bar")


@dataclass(frozen=True)
class PruneConfig:
    schedule: str = _opt("saturation", "none (dense baseline), fixed, saturation, interval",
                         choices=("none", "fixed", "saturation", "interval"))
    epochs: tuple[int, ...] = _opt((), "fixed: prune after these (1-based) epochs")
    interval: int = _opt(5, "interval: prune every this many epochs after warmup", lo=1)
    warmup: int = _opt(5, "epochs before the first prune, and between prunes (saturation)", lo=0)
    density_tol: float = _opt(0.01, "saturation: max change of every layer's density", lo=0.0, hi=1.0)
    patience: int = _opt(2, "saturation: consecutive settled epochs required", lo=1)
    max_rounds: int = _opt(5, "at most this many prunes", lo=0)
    min_gain: float = _opt(0.01, "stop pruning once a round removes less than this fraction of params",
                           lo=0.0, hi=1.0)
    width_scale: float = _opt(1.0, "new width = ceil(width_scale * density * width)", lo=0.0)
    min_channels: int = _opt(1, "no layer is pruned below this width", lo=1)
    round_to: int = _opt(1, "new widths rounded up to a multiple of this", lo=1)
    select: str = _opt("density", "which channels stay: density, l1, random",
                       choices=("density", "l1", "random"))
    channel_density_min: float = _opt(0.0, "channels with density below this always go", lo=0.0, hi=1.0)
    transfer: str = _opt("inherit", "inherit (keep weights, BN stats, momentum) or reinit",
                         choices=("inherit", "reinit"))
    group_density: str = _opt("mean", "combine densities of a residual group: mean (pooled) or max",
                              choices=("mean", "max"))
    width_rule: str = _opt("ad", "how wide a group stays: ad (ceil(width_scale * density * width)) or threshold "
                                 "(its channels whose density >= prune.channel_threshold)",
                           choices=("ad", "threshold"))
    channel_threshold: float = _opt(0.1, "width_rule threshold: a channel counts if its density is at least this",
                                    lo=0.0, hi=1.0)
    bn_recalibrate: bool = _opt(True, "after each cut, re-estimate batch-norm statistics on prune.bn_images training "
                                      "images (train mode, no weight update; cost counted in train_flops_cum)")
    bn_images: int = _opt(512, "training images (seeded, unaugmented) for prune.bn_recalibrate", lo=1)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                             "prune": PruneConfig}


__all__ = ["CACHE_DIR_ENV", "DATA_ROOT_ENV", "MAX_CHANNELS", "MAX_SEED", "SECTIONS", "Config", "DataConfig",
           "ModelConfig", "PruneConfig", "TrainConfig"]
