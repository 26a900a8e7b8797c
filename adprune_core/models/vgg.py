"""CIFAR-style VGG with batch norm: 3x3 convs, BN, ReLU, 2x2 max-pools, one linear classifier.

At 32x32 input and 10 classes, VGG-19 has 20.04M parameters and 0.80 GFLOPs (see costs.py).
Each ReLU is its own module so that every activation has a name.
"""

from __future__ import annotations

from torch import nn

from adprune_core.errors import ConfigError
from adprune_core.models.common import init_weights, scaled
from adprune_core.sections import ModelConfig

POOL = "M"
VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    13: [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    16: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
    19: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
         512, 512, 512, 512, POOL],
}


class VGG(nn.Module):
    def __init__(self, plan: list[int | str], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in plan:
            if item == POOL:
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # identity at 32x32; makes 64x64 inputs work too
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_vgg(depth: int, cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> VGG:
    plan = list(VGG_PLANS[depth])
    n_convs = sum(1 for p in plan if p != POOL)
    if cfg.widths:
        if len(cfg.widths) != n_convs:
            raise ConfigError(f"model.widths: vgg{depth} has {n_convs} convs but {len(cfg.widths)} "
                              f"widths were given; give exactly {n_convs}")
        it = iter(cfg.widths)
        plan = [p if p == POOL else next(it) for p in plan]
    min_side = 2 ** sum(1 for p in plan if p == POOL)
    if min(image_shape[1:]) < min_side:
        raise ConfigError(f"model.name: vgg{depth} needs images of at least {min_side}x{min_side}, "
                          f"got {image_shape[1]}x{image_shape[2]}; use larger images")
    plan = [p if p == POOL else scaled(int(p), cfg.width_mult) for p in plan]
    return VGG(plan, num_classes, image_shape[0])
