"""The trainer end to end on small synthetic runs (real training, real files)."""

import json
import math

import pytest
import torch

from adprune_core.callbacks import Callback
from adprune_core.config import load_config
from adprune_core.data import DeviceLoader, load_dataset
from adprune_core.export import load_model
from adprune_core.policy import should_prune
from adprune_core.records import RunSummary
from adprune_core.runtime import learning_rate
from adprune_core.trainer import train
from tests.helpers import ROOT, tiny_config


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """configs/smoke.yaml exactly as a user runs it."""
    out = tmp_path_factory.mktemp("smoke")
    cfg = load_config(ROOT / "configs/smoke.yaml", ["train.progress=false"])
    return cfg, train(cfg, out), out


def test_smoke_prunes_loses_params_and_beats_chance(smoke):
    cfg, result, out = smoke
    summary = RunSummary.read(out / "summary.json")
    final = summary.final
    assert final.status == "completed"
    assert len(summary.prune_events) >= 1
    assert final.params < final.params_dense and final.compression_params > 1.5
    assert final.flops < final.flops_dense
    assert final.val_top1 > 2 / summary.dataset["num_classes"]  # well above chance
    assert 0.0 <= final.val_top1 <= 1.0


def test_summary_records_every_epoch_and_prune(smoke):
    cfg, _, out = smoke
    summary = RunSummary.read(out / "summary.json")
    assert summary.config["prune"]["epochs"] == list(cfg.prune.epochs)
    epochs = summary.epochs
    assert [e.epoch for e in epochs] == list(range(1, cfg.train.epochs + 1))
    keys = {"epoch", "train_loss", "train_top1", "val_top1", "densities", "widths", "params", "flops",
            "train_flops_cum", "seconds"}
    assert all(keys <= e.to_dict().keys() for e in epochs)
    assert all(0 < d <= 1 for e in epochs for d in e.densities.values())
    assert set(epochs[0].densities) == set(epochs[0].widths)  # layer names: modules' dotted names
    cum = [e.train_flops_cum for e in epochs]
    assert all(b > a for a, b in zip(cum, cum[1:]))
    for event in summary.prune_events:
        assert event.epoch in cfg.prune.epochs
        assert all(event.widths_after[k] <= v for k, v in event.widths_before.items())
        assert any(event.widths_after[k] < v for k, v in event.widths_before.items())
        nxt = epochs[event.epoch]  # the epoch after the prune trains the cut network
        assert nxt.widths == event.widths_after and nxt.params == event.params_after
        # VGG: one layer per group, so each new width is exactly max(1, ceil(density * width))
        for layer, before in event.widths_before.items():
            expected = max(1, math.ceil(event.densities[layer] * before - 1e-9))
            assert event.widths_after[layer] == expected


def test_exported_network_rebuilds_with_identical_outputs(smoke):
    cfg, result, out = smoke
    data = load_dataset(cfg.data)
    x, _ = next(iter(DeviceLoader(data.val_images, data.val_labels, batch_size=32, device="cpu",
                                  mean=data.mean, std=data.std, train=False)))
    model = result.model.cpu().eval()
    assert torch.equal(load_model(out / "model")(x), model(x))


def test_dense_baseline_never_prunes():
    result = train(tiny_config("train.epochs=2", "prune.schedule=none"))
    assert result.summary.prune_events == ()
    assert result.summary.final.compression_params == 1.0


def test_saturation_prunes_exactly_when_the_policy_says():
    cfg = tiny_config("train.epochs=6", "prune.schedule=saturation", "prune.warmup=1", "prune.patience=1",
                      "prune.density_tol=0.5", "prune.max_rounds=2")
    summary = train(cfg).summary
    events = [e.epoch for e in summary.prune_events]
    assert events, "a loose tolerance must trigger a prune"
    history, last, rounds, expected = [], 0, 0, []
    for record in summary.epochs:
        history.append(record.densities)
        if should_prune(cfg.prune, record.epoch, cfg.train.epochs, history, last, rounds):
            expected.append(record.epoch)
            last, rounds = record.epoch, rounds + 1
    assert events == expected and len(events) <= 2


@pytest.mark.parametrize("overrides", [
    ("model.name=resnet18", "prune.transfer=reinit", "prune.select=l1"),
    ("model.name=vgg11", "prune.select=random", "prune.round_to=4", "prune.channel_density_min=0.05"),
    ("model.name=torchvision:mobilenet_v2", "model.width_mult=1", "prune.group_density=max"),
])
def test_variants_prune_and_train(overrides):
    result = train(tiny_config("train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]", *overrides))
    final = result.summary.final
    assert final.status == "completed" and final.prune_rounds == 1
    assert final.params < final.params_dense


def test_round_to_makes_every_cut_width_a_multiple():
    result = train(tiny_config("train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]", "model.name=vgg11",
                               "prune.round_to=4", "prune.width_scale=0.9"))
    event = result.summary.prune_events[0]
    before, after = event.widths_before, event.widths_after
    assert all(w % 4 == 0 for w in before.values())  # vgg11 at 1/8 width: 8 to 64 channels
    assert all(w % 4 == 0 and w <= before[k] for k, w in after.items())
    assert any(w < before[k] for k, w in after.items())


def test_min_gain_stops_pruning():
    # width_scale 1.0 with density ~0.5 removes far more than 1%, but a 99% min_gain refuses every cut
    cfg = tiny_config("train.epochs=3", "prune.schedule=fixed", "prune.epochs=[1,2]", "prune.min_gain=0.99")
    summary = train(cfg).summary
    assert summary.prune_events == () and summary.final.prune_rounds == 0


def test_nan_loss_ends_the_run_as_diverged(tmp_path):
    result = train(tiny_config("train.epochs=3", "train.lr=1e12", "prune.schedule=none"), tmp_path)
    summary = RunSummary.read(tmp_path / "summary.json")
    assert result.summary.final.status == "diverged" == summary.final.status
    # the run stops in the epoch whose loss became NaN, and records that epoch
    assert len(summary.epochs) == 1 and not math.isfinite(summary.epochs[-1].train_loss)


def test_callback_can_stop_a_run():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, record):
            return "enough" if record.epoch == 2 else None

    summary = train(tiny_config("train.epochs=4", "prune.schedule=none"), callbacks=[StopAfterTwo()]).summary
    assert summary.final.status == "stopped" and summary.final.stop_reason == "enough"
    assert len(summary.epochs) == 2


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")])
def test_summary_says_running_until_the_end_and_why_a_run_ended_early(tmp_path, error, status):
    """A killed run's summary.json must not say ``completed``: it says ``running`` until the network is saved;
    a run that Ctrl-C (or an error) ends says ``interrupted`` (``failed``)."""
    seen = []

    class ReadThenStop(Callback):
        def on_epoch_end(self, record):
            if record.epoch == 2:
                seen.append(RunSummary.read(tmp_path / "summary.json").final.status)
                raise error("stop")

    with pytest.raises(error):
        train(tiny_config("train.epochs=4", "prune.schedule=none"), tmp_path, callbacks=[ReadThenStop()])
    assert seen == ["running"]  # written after epoch 1 of 4, while the run went on
    summary = RunSummary.read(tmp_path / "summary.json")
    assert summary.final.status == status and [e.epoch for e in summary.epochs] == [1, 2]
    done = train(tiny_config("train.epochs=2", "prune.schedule=none"), tmp_path / "done").summary
    assert RunSummary.read(tmp_path / "done" / "summary.json").final.status == "completed"
    assert done.final.status == "completed"


def test_learning_rate_schedules():
    cfg = load_config(None, ["train.epochs=10", "train.lr=0.1"]).train
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 5) == pytest.approx(0.05)
    step = load_config(None, ["train.epochs=10", "train.lr_schedule=step"]).train
    assert [round(learning_rate(step, t), 6) for t in (0, 4.9, 5, 7.5)] == [0.1, 0.1, 0.01, 0.001]
    warm = load_config(None, ["train.epochs=10", "train.warmup_epochs=2", "train.lr_schedule=constant"]).train
    assert learning_rate(warm, 1) == pytest.approx(0.1 * 1.001 / 2) and learning_rate(warm, 3) == 0.1


def test_init_widths_trains_the_given_architecture_from_scratch(smoke):
    _, result, out = smoke
    widths = json.loads((out / "model" / "model.json").read_text())["group_widths"]
    cfg = tiny_config("train.epochs=1", "prune.schedule=none", "model.name=vgg11", "model.width_mult=0.25")
    control = train(cfg, init_widths=widths).summary
    assert control.final.params == result.summary.final.params
    assert control.final.params_dense == result.summary.final.params_dense
    assert control.epochs[0].widths == result.summary.epochs[-1].widths


def test_channels_last_trains_like_contiguous():
    runs = [train(tiny_config("model.name=vgg11", "train.epochs=2", "prune.schedule=fixed", "prune.epochs=[1]",
                              f"train.channels_last={mode}")).summary for mode in ("off", "on")]
    (a, b) = runs
    # the same maths in another memory layout: float rounding may move a width by a channel, no more
    widths_a, widths_b = a.prune_events[0].widths_after, b.prune_events[0].widths_after
    assert widths_a.keys() == widths_b.keys()
    assert all(abs(widths_a[k] - widths_b[k]) <= 1 for k in widths_a)
    assert b.epochs[0].train_loss == pytest.approx(a.epochs[0].train_loss, rel=0.02)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_recompiles_after_each_prune():
    overrides = ("model.name=vgg11", "train.epochs=3", "prune.schedule=fixed", "prune.epochs=[1,2]")
    eager = train(tiny_config(*overrides)).summary
    compiled = train(tiny_config(*overrides, "train.compile=true")).summary
    assert compiled.final.status == "completed" and compiled.final.prune_rounds == 2
    for e, c in zip(eager.epochs, compiled.epochs):  # each architecture ran compiled, and trained alike
        assert c.train_loss == pytest.approx(e.train_loss, rel=0.05)
        assert all(abs(c.widths[k] - e.widths[k]) <= 1 for k in e.widths)
