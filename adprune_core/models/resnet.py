"""ResNet with BasicBlocks for small images (He et al. 2016, CIFAR variant).

Stems (``model.stem``):
- ``cifar``: 3x3 conv, stride 1, no max-pool (32x32 input; ResNet-18: 11.17M params, 1.11 GFLOPs).
- ``tiny``: 3x3 conv, stride 1, then a 3x3 stride-2 max-pool, so 64x64 TinyImageNet images reach
  the stages at 32x32 and cost about what CIFAR does.
- ``imagenet``: 7x7 stride-2 conv and max-pool (torchvision's).
- ``auto`` (default): ``cifar`` for inputs up to 32 pixels, ``tiny`` up to 64, else ``imagenet``.
Every ReLU is its own module (``relu1`` inside the branch, ``relu2`` after the residual addition),
so that each activation can be measured by name.
"""

from __future__ import annotations

from torch import nn

from adprune_core.errors import ConfigError
from adprune_core.models.common import init_weights, scaled
from adprune_core.sections import ModelConfig

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], num_classes: int,
                 stem: str, in_channels: int = 3) -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem in ("tiny", "imagenet") else nn.Identity()
        stages, in_ch = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for b in range(n):
                layer.append(BasicBlock(in_ch, w, 2 if (b == 0 and i > 0) else 1))
                in_ch = w
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resolve_stem(stem: str, image_side: int) -> str:
    if stem != "auto":
        return stem
    return "cifar" if image_side <= 32 else "tiny" if image_side <= 64 else "imagenet"


def build_resnet(depth: int, cfg: ModelConfig, num_classes: int,
                 image_shape: tuple[int, int, int]) -> ResNet:
    widths = tuple(cfg.widths) or STAGE_WIDTHS
    if len(widths) != 4:
        raise ConfigError(f"model.widths: resnet{depth} takes 4 stage widths, got {list(widths)}; "
                          "give e.g. [64,128,256,512]")
    widths = tuple(scaled(w, cfg.width_mult) for w in widths)
    return ResNet(BLOCKS[depth], widths, num_classes, resolve_stem(cfg.stem, min(image_shape[1:])),
                  image_shape[0])
