"""What happens at a cut, on real (tiny) training: batch-norm recalibration, the density meter's hooks, the
record that lets a width be recomputed, and test_top1 measured on the untouched test split at the end."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from adprune_core import policy, trainer
from adprune_core.config import load_config
from adprune_core.data import DeviceLoader, load_dataset
from adprune_core.errors import ConfigError
from adprune_core.graph import prepare_model
from adprune_core.models import build_model
from adprune_core.recalibrate import recalibrate_batchnorm
from adprune_core.records import BnRecalibration
from adprune_core.runtime import evaluate
from adprune_core.trainer import train
from tests.helpers import tiny_config

# Enough real training that a cut network's accuracy means something: a VGG-11 at width 0.25 reaches
# about 60% on 10 synthetic classes in two epochs; the cut keeps about 3/4 of every layer.
LEARNS = ["model.name=vgg11", "model.width_mult=0.25", "data.train_size=1000", "data.val_size=500",
          "train.batch_size=64", "train.lr=0.05", "train.progress=false", "train.device=cpu", "train.epochs=3",
          "prune.schedule=fixed", "prune.epochs=[2]", "prune.width_scale=1.6"]


def hooks(model: nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) for name, m in model.named_modules() if m._forward_hooks}


# --- recalibrate_batchnorm ----------------------------------------------------------------------------

def test_recalibration_estimates_the_exact_batch_statistics_and_touches_nothing_else():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.zeros(1, 3, 6, 6))
    net.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3, 6, 6) * 3 + 1 for _ in range(3)]
    rng = torch.get_rng_state()
    assert recalibrate_batchnorm(net, [(b, None) for b in batches]) == 24
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn (dropout stayed off)
    conv_out = torch.cat([net[0](b) for b in batches])  # equal batch sizes: the average of batch means is the mean
    bn = net[1]
    assert torch.allclose(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([net[0](b).var((0, 2, 3), unbiased=True) for b in batches])
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and not net.training and not bn.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # no weight changed
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), [torch.zeros(1, 2)]) == 0  # no BN: nothing


# --- batch-norm recalibration in the trainer ----------------------------------------------------------

def test_right_after_a_cut_recalibrated_statistics_score_well_above_chance_and_inherited_ones_do_not():
    on = train(load_config(None, LEARNS)).summary  # recalibration on: the default
    chance = 1 / on.dataset["num_classes"]
    assert on.epochs[1].val_top1 > 5 * chance  # the network had learned before the cut
    event = on.prune_events[0]
    stale, recalibrated = event.bn_recalibration.val_top1_before, event.val_top1_after_cut
    assert recalibrated > 3 * chance
    assert stale < 2.5 * chance
    assert recalibrated > stale + 0.15


def test_recalibration_is_counted_in_training_compute_and_leaves_the_training_stream_alone():
    cfg = tiny_config("train.epochs=3", "prune.schedule=fixed", "prune.epochs=[1]", "data.train_size=128")
    on = train(cfg).summary
    off = train(cfg.replace(prune=dataclasses.replace(cfg.prune, bn_recalibrate=False))).summary
    bn = on.prune_events[0].bn_recalibration
    assert bn.images == 128 and bn.flops == 128 * on.prune_events[0].flops_after  # all 128 < 512
    assert off.prune_events[0].bn_recalibration == BnRecalibration(images=0, flops=0)
    assert on.final.train_flops_cum - off.final.train_flops_cum == bn.flops
    # its own generator, no weight update, batch statistics in training: every training step is the same
    assert [e.train_loss for e in on.epochs] == [e.train_loss for e in off.epochs]
    assert on.epochs[0].val_top1 == off.epochs[0].val_top1


def test_recalibration_is_deterministic():
    cfg = tiny_config("train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]", "data.train_size=128")
    a, b = (train(cfg).summary.prune_events[0] for _ in range(2))
    assert a.bn_recalibration == b.bn_recalibration and a.val_top1_after_cut == b.val_top1_after_cut


# --- the density meter's hooks --------------------------------------------------------------------------

def test_each_measured_activation_has_one_hook_after_any_number_of_cuts_and_the_result_has_none():
    cfg = tiny_config("train.epochs=4", "prune.schedule=fixed", "prune.epochs=[1,2,3]", "prune.width_scale=0.9",
                      "prune.bn_recalibrate=false")
    data = load_dataset(cfg.data)
    example = torch.zeros(1, *data.image_shape)
    torch.manual_seed(0)
    state = trainer._new_state(prepare_model(build_model(cfg.model, data.num_classes, data.image_shape)), cfg, data,
                               example, optimizer=None)
    x = torch.randn(32, *data.image_shape)
    val = DeviceLoader(data.val_images, data.val_labels, batch_size=64, device="cpu", mean=data.mean, std=data.std,
                       train=False)
    for epoch in (1, 2, 3):
        state.meter.reset()
        state.meter.active = True
        state.model(x)
        state.meter.active = False
        counts = state.meter.read()
        state, event = trainer._prune(state, cfg, data, counts, {}, epoch, example, trainer._Cut(val, None))
        assert event is not None and state.rounds == epoch
        assert hooks(state.model) == dict.fromkeys(state.graph.activations, 1), epoch

    result = train(cfg)
    assert len(result.summary.prune_events) == 3
    assert hooks(result.model) == {}


def test_a_cut_that_does_not_pay_keeps_measuring_the_uncut_network():
    cfg = tiny_config("train.epochs=3", "prune.schedule=fixed", "prune.epochs=[1,2]", "prune.width_scale=100",
                      "prune.min_gain=0.5")
    summary = train(cfg).summary
    assert summary.prune_events == () and summary.final.prune_rounds == 0
    assert all(e.densities for e in summary.epochs)  # every epoch still measured, after the refused cut


# --- the record of a cut ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["ad", "threshold"])
def test_every_group_width_can_be_recomputed_from_the_prune_event(rule):
    cfg = tiny_config("model.name=resnet18", "train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]",
                      f"prune.width_rule={rule}", "prune.width_scale=1.3", "prune.channel_threshold=0.45",
                      "prune.round_to=2", "prune.group_density=mean")
    event = train(cfg).summary.prune_events[0]
    p = cfg.prune
    groups = event.groups
    assert set(groups) == set(event.kept_idxs)
    for name, g in groups.items():
        if rule == "ad":
            want = policy.new_width(g.density, g.width_before, width_scale=p.width_scale,
                                    min_channels=p.min_channels, round_to=p.round_to)
        else:
            want = min(g.width_before, math.ceil(max(p.min_channels, g.at_threshold) / p.round_to) * p.round_to)
        assert len(event.kept_idxs[name]) == want, name
        assert 0 < g.density < 1
    # the residual stream of layer1 is one group (conv1, layer1.0.conv2, layer1.1.conv2): one width for its three
    # layers, from the pooled density of their three activations (equal sizes here: the plain mean)
    tied = ("conv1", "layer1.0.conv2", "layer1.1.conv2")
    assert {event.widths_after[lay] for lay in tied} == {len(event.kept_idxs["conv1"])}
    assert groups["conv1"].density == pytest.approx(sum(event.densities[lay] for lay in tied) / 3)
    assert len({event.densities[lay] for lay in tied}) == 3  # which no single layer's density would give


# --- test_top1 --------------------------------------------------------------------------------------------------

def test_test_top1_is_measured_once_at_the_end_on_the_untouched_test_split():
    cfg = tiny_config("train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]", "data.holdout=0.25")
    data = load_dataset(cfg.data)
    result = train(cfg, data=data)
    s = result.summary
    assert s.dataset["val_split"] == "held out of the training images" and s.dataset["val_size"] == 64
    assert s.dataset["test_size"] == 128 and s.dataset["train_size"] == 192
    assert all("test_top1" not in e.to_dict() for e in s.epochs)
    test = DeviceLoader(data.test_images, data.test_labels, batch_size=64, device="cpu", mean=data.mean,
                        std=data.std, train=False)
    assert s.final.test_top1 == evaluate(result.model, test)

    # the test labels reach nothing but test_top1: shuffled, every epoch and the cut are the same
    shuffled = dataclasses.replace(data, test_labels=data.test_labels[torch.randperm(128,
                                                                                    generator=torch.Generator().manual_seed(1))])
    other = train(cfg, data=shuffled).summary

    def timeless(epochs):
        return [dataclasses.replace(e, seconds=0) for e in epochs]

    assert timeless(other.epochs) == timeless(s.epochs) and other.prune_events == s.prune_events
    assert other.final.test_top1 != s.final.test_top1

    no_holdout = train(tiny_config("train.epochs=1", "prune.schedule=none")).summary
    assert no_holdout.dataset["val_split"] == "the dataset's evaluation split"
    assert no_holdout.final.test_top1 == no_holdout.final.val_top1


# --- width_plan: another run's widths, other channels ------------------------------------------------------------

def test_a_width_plan_replays_a_residual_networks_widths_with_other_channels():
    cfg = tiny_config("model.name=resnet18", "train.epochs=3", "prune.schedule=fixed", "prune.epochs=[1,2]",
                      "prune.width_scale=0.9")
    trial = train(cfg).summary
    plan = {e.epoch: {g: len(kept) for g, kept in e.kept_idxs.items()} for e in trial.prune_events}
    replay_cfg = cfg.replace(prune=dataclasses.replace(cfg.prune, select="random", width_rule="threshold",
                                                       min_gain=0.0))
    replay = train(replay_cfg, width_plan=plan).summary
    assert [e.widths_after for e in replay.prune_events] == [e.widths_after for e in trial.prune_events]
    assert replay.final.flops == trial.final.flops and replay.width_plan == {
        str(e): w for e, w in plan.items()}
    assert replay.prune_events[0].kept_idxs != trial.prune_events[0].kept_idxs
    with pytest.raises(ConfigError, match=r"width_plan: replaying widths at epochs \[1, 2\] needs prune.sched"):
        train(cfg.replace(prune=dataclasses.replace(cfg.prune, epochs=(1,))), width_plan=plan)
