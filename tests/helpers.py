"""Small builders shared by the tests."""

import torch
from torch import nn

from adprune_core.config import ModelConfig
from adprune_core.graph import prepare_model
from adprune_core.models import build_model
from study.stores import Stores


def optuna_uri(runs) -> str:
    """The embedded Optuna storage URL of runtime folder ``runs``."""
    return Stores.resolve(runs, env={}).optuna_url


def tracking_uri(runs) -> str:
    """The embedded MLflow tracking URI of runtime folder ``runs``."""
    return Stores.resolve(runs, env={}).tracking_uri


def small_model(name: str, width_mult: float = 0.125, num_classes: int = 10, side: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return prepare_model(build_model(ModelConfig(name=name, width_mult=width_mult), num_classes, (3, side, side)))


def kill_channels(bn: nn.BatchNorm2d, channels) -> None:
    """Make BN output -10 on ``channels`` for any input, so the ReLU after it outputs exactly 0."""
    with torch.no_grad():
        for c in channels:
            bn.weight[c] = 0.0
            bn.bias[c] = -10.0


# A tiny study (synthetic data, a narrow VGG-11, 3 epochs): real trials in seconds.
EPOCHS = 3
TINY = {
    "base": {"data": {"name": "synthetic", "train_size": 256, "val_size": 128},
             "model": {"name": "vgg11", "width_mult": 0.125},
             "train": {"batch_size": 64, "lr": 0.05, "progress": False, "device": "cpu"},
             "prune": {"schedule": "saturation"}},
    "fixed": {"train.epochs": EPOCHS},
    "space": {"prune.schedule": {"type": "categorical", "choices": ["fixed", "interval"]},
              "prune.first_frac": {"type": "float", "low": 0.2, "high": 0.5},
              "prune.rounds": {"type": "int", "low": 1, "high": 2},
              "prune.width_scale": {"type": "float", "low": 0.8, "high": 1.2},
              "prune.select": {"type": "categorical", "choices": ["density", "l1", "random"]}},
    "objectives": [{"name": "val_top1", "direction": "maximize"}, {"name": "flops", "direction": "minimize"},
                   {"name": "train_flops_cum", "direction": "minimize"}],
    "sampler": {"name": "tpe", "seed": 7},
    "constraints": {"max_accuracy_drop": 1.0},
}

