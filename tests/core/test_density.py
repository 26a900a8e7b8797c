"""Activation density measured exactly, on inputs whose answer is computed by hand."""

import pytest
import torch
from torch import nn

from adprune_core.density import ChannelCounts, DensityMeter


def test_counts_per_channel_and_layer_by_hand():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    meter = DensityMeter(model, ["1"])
    # batch 1: (N=2, C=2, H=1, W=2). channel 0: values [1,-1],[2,0] -> 2 non-zero; channel 1: [-1,-2],[3,4] -> 2
    x1 = torch.tensor([[[[1.0, -1.0]], [[-1.0, -2.0]]], [[[2.0, 0.0]], [[3.0, 4.0]]]])
    # batch 2: (N=1): channel 0: [5, 6] -> 2 non-zero; channel 1: [0, -3] -> 0
    x2 = torch.tensor([[[[5.0, 6.0]], [[0.0, -3.0]]]])
    meter.active = True
    model(x1)
    model(x2)
    counts = meter.read()["1"]
    assert counts.nonzero == (4, 2)
    assert counts.per_channel_total == 6  # 4 + 2 outputs per channel
    assert counts.channel_densities == pytest.approx((4 / 6, 2 / 6))
    assert counts.layer_density == pytest.approx(6 / 12)


def test_inactive_meter_counts_nothing_and_reset_clears():
    model = nn.Sequential(nn.ReLU())
    meter = DensityMeter(model, ["0"])
    model(torch.ones(3, 2))
    assert meter.read() == {}
    meter.active = True
    model(torch.tensor([[1.0, -1.0], [0.0, 2.0]]))  # linear outputs (N, C)
    assert meter.read()["0"] == ChannelCounts((1, 1), 2)
    meter.reset()
    assert meter.read() == {}
    meter.remove()
    model(torch.ones(3, 2))
    assert meter.read() == {}


def test_inplace_relu_is_measured_after_the_activation():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)  # all-positive input -> all outputs negative -> density 0
    meter = DensityMeter(model, ["1"])
    meter.active = True
    model(torch.rand(2, 1, 4, 4) + 0.1)
    assert meter.read()["1"].layer_density == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_counts_equal_count_nonzero_for_relu6_and_low_precision(dtype):
    model = nn.Sequential(nn.ReLU6())
    meter = DensityMeter(model, ["0"])
    meter.active = True
    x = (torch.randn(8, 5, 6, 7, generator=torch.Generator().manual_seed(0)) * 10).to(dtype)
    y = model(x)  # values in [0, 6], many exactly 0 and many exactly 6
    assert meter.read()["0"].nonzero == tuple(torch.count_nonzero(y, dim=(0, 2, 3)).tolist())
