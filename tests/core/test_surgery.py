"""Physical pruning: dead channels go without changing outputs; groups stay consistent; momentum moves."""

import pytest
import torch

from adprune_core.config import TrainConfig
from adprune_core.costs import count_params
from adprune_core.density import DensityMeter
from adprune_core.graph import analyse
from adprune_core.policy import select_channels
from adprune_core.surgery import prune_groups, restore_momentum, stash_momentum
from adprune_core.trainer import build_optimizer
from tests.helpers import kill_channels, small_model

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _measure(model, graph):
    meter = DensityMeter(model, graph.activations)
    meter.active = True
    with torch.no_grad():
        model(X)
    counts = meter.read()
    meter.remove()
    return counts


def _keep_alive(graph, counts):
    """Per group, keep exactly the channels with non-zero density (the policy's selection)."""
    plan = {}
    for g in graph.groups:
        per_channel = [max(col) for col in zip(*(counts[a].channel_densities for a in g.activations))]
        alive = sum(1 for d in per_channel if d > 0)
        plan[g.name] = select_channels(per_channel, alive, channel_densities=per_channel)
    return plan


def test_vgg_dead_channels_removed_output_unchanged():
    model = small_model("vgg11").eval()
    graph = analyse(model, X[:1])
    kill_channels(model.features[1], [0, 3, 5])
    kill_channels(model.features[5], [1, 2])
    before = model(X)
    plan = _keep_alive(graph, _measure(model, graph))
    assert len(plan["features.0"]) == graph.group("features.0").width - 3
    params = count_params(model)
    prune_groups(model, plan, X[:1])
    assert count_params(model) < params
    assert model.features[0].out_channels == 8 - 3 and model.features[4].in_channels == 8 - 3
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5)


def test_resnet_dead_residual_group_removed_output_unchanged_and_consistent():
    model = small_model("resnet18").eval()
    graph = analyse(model, X[:1])
    stem = graph.group("conv1")  # stem + layer1's residual stream
    assert set(stem.layers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    dead = [0, 2]
    kill_channels(model.bn1, dead)
    kill_channels(model.layer1[0].bn2, dead)
    kill_channels(model.layer1[1].bn2, dead)
    kill_channels(model.layer2[0].bn1, [4, 5, 6])  # an inner (non-residual) group
    before = model(X)
    plan = _keep_alive(graph, _measure(model, graph))
    assert len(plan["conv1"]) == 8 - 2 and len(plan["layer2.0.conv1"]) == 16 - 3
    prune_groups(model, plan, X[:1])
    torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5)
    after = analyse(model, X[:1])
    for g in after.groups:  # every layer of a group has the group's width
        widths = {m.out_channels for m in (model.get_submodule(n) for n in g.layers)}
        assert widths == {g.width}
    assert model.layer1[0].conv1.in_channels == 6 and model.layer2[0].shortcut[0].in_channels == 6


def test_resnet_arbitrary_cut_keeps_network_runnable():
    model = small_model("resnet18")
    graph = analyse(model, X[:1])
    plan = {g.name: list(range(0, g.width, 2)) for g in graph.groups}
    prune_groups(model, plan, X[:1])
    assert model(X).shape == (4, 10)
    assert all(g.width == old.width // 2 for g, old in zip(analyse(model, X[:1]).groups, graph.groups))


def test_momentum_follows_kept_channels():
    model = small_model("vgg11")
    opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9))
    model(X).sum().backward()
    opt.step()
    old = opt.state[model.features[0].weight]["momentum_buffer"].clone()
    cut = __import__("copy").deepcopy(model)
    stash_momentum(model, opt, cut)
    keep = [1, 4, 6]
    prune_groups(cut, {"features.0": keep}, X[:1])
    new_opt = build_optimizer(cut, TrainConfig())
    assert restore_momentum(cut, new_opt) == len(list(cut.parameters()))
    torch.testing.assert_close(new_opt.state[cut.features[0].weight]["momentum_buffer"], old[keep])
    assert all(p.grad is None for p in cut.parameters())


def test_bad_kept_indices_are_rejected():
    model = small_model("vgg11")
    with pytest.raises(ValueError, match="kept indices"):
        prune_groups(model, {"features.0": [0, 99]}, X[:1])
    with pytest.raises(ValueError, match="kept indices"):
        prune_groups(model, {"features.0": []}, X[:1])


def test_torchvision_models_are_prunable():
    import torchvision

    for net in (torchvision.models.resnet18(num_classes=10), torchvision.models.mobilenet_v2(num_classes=10)):
        from adprune_core.graph import prepare_model

        model = prepare_model(net).eval()
        graph = analyse(model, X[:1])
        assert graph.groups and all(g.activations for g in graph.groups)
        plan = {g.name: list(range(max(1, g.width // 2))) for g in graph.groups}
        params = count_params(model)
        prune_groups(model, plan, X[:1])
        assert count_params(model) < params and model(X).shape == (4, 10)
        # every group is exactly as wide as the plan kept
        assert {g.name: g.width for g in analyse(model, X[:1]).groups} == {n: len(k) for n, k in plan.items()}
