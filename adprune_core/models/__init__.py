"""Model registry: ``build_model(cfg, num_classes, image_shape)`` by ``model.name``.

Built-in: CIFAR-style VGG (vgg11/13/16/19, with BN) and ResNet (resnet18/34, BasicBlock),
plus any torchvision classification model as ``torchvision:<name>`` (e.g.
``torchvision:mobilenet_v2``), built untrained with ``num_classes`` outputs. Every model
must be traceable by ``torch.fx`` so that ``adprune_core.graph`` can find its activations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from adprune_core.errors import ConfigError
from adprune_core.models.resnet import build_resnet
from adprune_core.models.vgg import build_vgg
from adprune_core.registry import Registry
from adprune_core.sections import ModelConfig

ModelFactory = Callable[[ModelConfig, int, tuple[int, int, int]], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", "model.name")
MODELS.extra_hint = ", torchvision:<name>"
TORCHVISION_PREFIX = "torchvision:"

for _depth in (11, 13, 16, 19):
    MODELS.register(f"vgg{_depth}")(functools.partial(build_vgg, _depth))
for _depth in (18, 34):
    MODELS.register(f"resnet{_depth}")(functools.partial(build_resnet, _depth))


def _torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm))


def check_model_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a registered model or a torchvision classifier."""
    if name.startswith(TORCHVISION_PREFIX):
        tv_name = name[len(TORCHVISION_PREFIX):]
        if tv_name not in _torchvision_names():
            raise ConfigError(f"model.name: torchvision has no classification model {tv_name!r}; "
                              f"e.g. torchvision:resnet18, torchvision:mobilenet_v2, torchvision:vgg11_bn")
        return
    MODELS.get(name)


def build_model(cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised network for ``num_classes`` classes and (C, H, W) inputs."""
    check_model_name(cfg.name)
    if cfg.name.startswith(TORCHVISION_PREFIX):
        from torchvision import models as tvm

        if cfg.width_mult != 1.0 or cfg.widths:
            raise ConfigError(f"model.width_mult/model.widths are not supported for {cfg.name}; "
                              "leave them at their defaults for torchvision models")
        return tvm.get_model(cfg.name[len(TORCHVISION_PREFIX):], weights=None, num_classes=num_classes)
    return MODELS.get(cfg.name)(cfg, num_classes, image_shape)
