"""Small builders shared by the tests."""

import torch
from torch import nn

from adprune_core.config import ModelConfig
from adprune_core.graph import prepare_model
from adprune_core.models import build_model


def small_model(name: str, width_mult: float = 0.125, num_classes: int = 10, side: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return prepare_model(build_model(ModelConfig(name=name, width_mult=width_mult), num_classes, (3, side, side)))


def kill_channels(bn: nn.BatchNorm2d, channels) -> None:
    """Make BN output -10 on ``channels`` for any input, so the ReLU after it outputs exactly 0."""
    with torch.no_grad():
        for c in channels:
            bn.weight[c] = 0.0
            bn.bias[c] = -10.0
