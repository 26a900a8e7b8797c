"""Parameter and FLOP counts against closed-form arithmetic and the paper's reference points."""

import pytest
import torch
from torch import nn

from adprune_core.config import ModelConfig
from adprune_core.costs import count_params, inference_flops, training_flops
from adprune_core.models import build_model


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # 8x8 -> 8x8
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)  # -> 4x4
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.dw(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def test_tiny_network_by_hand():
    model = Tiny()
    conv = 2 * (4 * 8 * 8) * 3 * 3 * 3  # 2 x out elements x (in/groups) x k x k = 13824
    dw = 2 * (4 * 4 * 4) * 1 * 3 * 3  # = 1152
    fc = 2 * 4 * 2  # = 16
    assert inference_flops(model, (3, 8, 8)) == conv + dw + fc
    assert count_params(model) == (3 * 4 * 9 + 4) + (4 * 9) + (4 + 4) + (4 * 2 + 2)


def test_training_flops_about_three_forwards_and_leave_bn_untouched():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fwd = inference_flops(model, (3, 8, 8))
    train = training_flops(model, (3, 8, 8))
    assert 2 * fwd < train <= 3 * fwd + 64  # no input gradient for the first conv
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("name", "params_m", "gflops"), [("vgg19", 20.0, 0.80), ("resnet18", 11.2, 1.11)])
def test_reference_points_32x32_10_classes(name, params_m, gflops):
    model = build_model(ModelConfig(name=name), 10, (3, 32, 32))
    assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.01)
    assert inference_flops(model, (3, 32, 32)) / 1e9 == pytest.approx(gflops, rel=0.01)
