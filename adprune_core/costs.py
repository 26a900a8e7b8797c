"""What a network costs: parameters, inference FLOPs, training FLOPs.

Counting convention (after fvcore's, written down before counting):
- FLOPs = 2 x multiply-accumulates (MACs), per image, at the dataset's input size.
- Inference FLOPs count convolutions and linear layers only: a conv producing an (C_out, H, W)
  map from C_in channels with a k_h x k_w kernel and ``groups`` groups costs
  2 * C_out * H * W * (C_in / groups) * k_h * k_w; a linear layer 2 * in * out. Biases, batch
  norm, activations, pooling and residual additions are not counted (they are a few percent at
  most and fold into the convs at inference).
- Training FLOPs per image are measured, not estimated: ``torch.utils.flop_counter`` counts the
  forward and backward pass of one training step (matmuls and convolutions, 2 x MACs, as above),
  divided by the batch size. They are re-measured after every prune.
- Cumulative training compute ``train_flops_cum`` = sum over epochs of training FLOPs per image
  x images seen in that epoch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters())


def inference_flops(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """FLOPs (2 x MACs of convs and linear layers) of one forward pass on one (C, H, W) image."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k_h, k_w = m.kernel_size
        total += 2 * out[0].numel() * (m.in_channels // m.groups) * k_h * k_w

    def linear_hook(m: nn.Linear, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * m.in_features * m.out_features * (out[0].numel() // m.out_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        _forward_once(model, image_shape, batch=1)
    finally:
        for h in handles:
            h.remove()
    return total


def training_flops(model: nn.Module, image_shape: tuple[int, int, int], batch: int = 2) -> int:
    """Measured FLOPs of forward + backward per image (one training step, divided by ``batch``)."""
    was_training = model.training
    device = next(model.parameters()).device
    x = torch.randn(batch, *image_shape, device=device)
    model.train()
    bn_state = _save_bn_state(model)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x).float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        _restore_bn_state(model, bn_state)
        model.train(was_training)
    return counter.get_total_flops() // batch


def _forward_once(model: nn.Module, image_shape: tuple[int, int, int], batch: int) -> None:
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(batch, *image_shape, device=device))
    finally:
        model.train(was_training)


def _save_bn_state(model: nn.Module) -> list[tuple[nn.Module, dict]]:
    """BN running statistics, so that a measuring pass leaves the model exactly as it was."""
    return [(m, {k: v.clone() for k, v in m.state_dict().items()}) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _restore_bn_state(model: nn.Module, state: list[tuple[nn.Module, dict]]) -> None:
    for m, saved in state:
        m.load_state_dict(saved)
