"""A saved pruned network rebuilds, without pickle, into one with identical outputs."""

import json

import pytest
import torch

from adprune_core.config import ModelConfig
from adprune_core.errors import ADPruneError
from adprune_core.export import ARCH_FILE, WEIGHTS_FILE, load_model, save_model
from adprune_core.graph import analyse
from adprune_core.surgery import prune_groups
from tests.helpers import small_model

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_pruned_network_round_trips(tmp_path, name):
    model = small_model(name)
    graph = analyse(model, X[:1])
    # keep scattered channels, so a rebuild that ignored which ones were kept would still need the weights
    plan = {g.name: list(range(1, g.width, 3)) for g in graph.groups}
    prune_groups(model, plan, X[:1])
    model.train()
    model(X)  # move BN statistics away from their initial values
    model.eval()
    widths = {g.name: g.width for g in analyse(model, X[:1]).groups}
    save_model(tmp_path, model, model_cfg=ModelConfig(name=name, width_mult=0.125), num_classes=10,
               image_shape=(3, 32, 32), group_widths=widths, history=[{"epoch": 1, "kept_idxs": plan}])
    assert (tmp_path / WEIGHTS_FILE).read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    arch = json.loads((tmp_path / ARCH_FILE).read_text())
    assert arch["group_widths"] == widths and arch["history"][0]["kept_idxs"] == plan
    rebuilt = load_model(tmp_path)
    assert torch.equal(rebuilt(X), model(X))


def test_torchvision_model_round_trips(tmp_path):
    import torchvision

    from adprune_core.graph import prepare_model

    torch.manual_seed(0)
    model = prepare_model(torchvision.models.resnet18(num_classes=10)).eval()
    graph = analyse(model, X[:1])
    prune_groups(model, {g.name: list(range(g.width // 4)) for g in graph.groups}, X[:1])
    widths = {g.name: g.width for g in analyse(model, X[:1]).groups}
    save_model(tmp_path, model, model_cfg=ModelConfig(name="torchvision:resnet18"), num_classes=10,
               image_shape=(3, 32, 32), group_widths=widths)
    assert torch.equal(load_model(tmp_path)(X), model(X))


def test_loading_a_folder_without_a_model_fails_clearly(tmp_path):
    with pytest.raises(ADPruneError, match="not a saved network"):
        load_model(tmp_path)
