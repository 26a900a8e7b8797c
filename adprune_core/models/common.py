"""What the built-in networks share: scaling a base width, and the initialisation they start from.

``scaled`` turns a base width and ``model.width_mult`` into a layer's channel count (at least 1).
``init_weights`` initialises a network in place; ``surgery.reinitialize`` uses it to start a pruned
network afresh, so it depends on the layer types only, not on VGG or ResNet.
"""

from __future__ import annotations

import math

from torch import nn


def scaled(width: int, mult: float) -> int:
    """``width * mult`` rounded to the nearest channel count, at least 1."""
    return max(1, int(round(width * mult)))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), unit BN, small-normal linear, zero biases; mutates ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
