"""Epoch checkpoints: a pickle-free round trip, atomic writes, and a trainer run resumed after an interruption
ending bitwise identical to an uninterrupted one, without recomputing the finished epochs."""


import dataclasses

import pytest
import torch

from adprune_core import checkpoint
from adprune_core.config import ModelConfig, config_to_dict, load_config
from adprune_core.errors import ConfigError
from adprune_core.files import atomic_write
from adprune_core.graph import analyse, prepare_model
from adprune_core.models import build_model
from adprune_core.records import RunSummary
from adprune_core.surgery import prune_groups, shrink_to_widths
from adprune_core.trainer import build_optimizer, train
from tests.helpers import Interrupt, Watcher, small_model, tiny_config

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _pruned_model_with_momentum():
    model = small_model("vgg11")
    graph = analyse(model, X[:1])
    prune_groups(model, {g.name: list(range(1, g.width, 2)) for g in graph.groups}, X[:1])
    optimizer = build_optimizer(model, load_config(None, ["train.momentum=0.9"]).train)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(X).square().mean().backward()
        optimizer.step()
    widths = {g.name: g.width for g in analyse(model, X[:1]).groups}
    return model.eval(), optimizer, widths


def test_checkpoint_round_trips_weights_momentum_and_rng(tmp_path):
    model, optimizer, widths = _pruned_model_with_momentum()
    torch.manual_seed(123)
    torch.rand(5)
    path = checkpoint.save_checkpoint(tmp_path, model=model, optimizer=optimizer, epoch=3, group_widths=widths,
                                      state={"note": "hi", "loss": float("nan")})
    expected_next = torch.rand(5)  # what the global RNG gives right after the checkpoint
    assert path.read_bytes()[:2] != b"\x80\x04"  # safetensors, not a pickle
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temporary file left

    state = checkpoint.read_state(tmp_path)  # the header alone
    assert state["epoch"] == 3 and state["group_widths"] == widths and state["note"] == "hi"
    saved = checkpoint.load_checkpoint(tmp_path)
    assert saved.epoch == 3 and saved.group_widths == widths
    # the network: build -> prepare -> cut to the widths -> load, identical outputs
    rebuilt = prepare_model(build_model(ModelConfig(name="vgg11", width_mult=0.125), 10, (3, 32, 32)))
    shrink_to_widths(rebuilt, saved.group_widths, X[:1])
    rebuilt.load_state_dict(saved.model_state, strict=True)
    assert torch.equal(rebuilt.eval()(X), model(X))
    # momentum, by parameter name, into a fresh optimizer of the rebuilt network
    fresh = build_optimizer(rebuilt, load_config(None, ["train.momentum=0.9"]).train)
    assert checkpoint.restore_momentum_buffers(rebuilt, fresh, saved.momentum) == len(list(model.parameters()))
    originals = dict(model.named_parameters())
    for name, p in rebuilt.named_parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], optimizer.state[originals[name]]["momentum_buffer"])
    # the RNG
    torch.rand(100)
    checkpoint.restore_rng_states(saved.rng)
    assert saved.rng["torch"].dtype == torch.uint8 and torch.equal(torch.rand(5), expected_next)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    model, optimizer, widths = _pruned_model_with_momentum()
    checkpoint.save_checkpoint(tmp_path, model=model, optimizer=optimizer, epoch=1, group_widths=widths)
    target = checkpoint.checkpoint_path(tmp_path)
    before = target.read_bytes()

    def half_then_crash(tmp):
        tmp.write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [target.name]
    assert checkpoint.read_state(tmp_path)["epoch"] == 1


def test_config_mismatch_names_the_keys():
    a = config_to_dict(tiny_config())
    b = config_to_dict(tiny_config("train.epochs=9", "train.progress=true"))
    assert checkpoint.config_mismatch(a, b) == [f"train.epochs: {a['train']['epochs']!r} -> 9"]


@pytest.mark.parametrize("overrides", [
    ("prune.schedule=fixed", "prune.epochs=[1,3]"),  # resumed between two prunes, momentum carried
    ("prune.schedule=fixed", "prune.epochs=[2]", "prune.transfer=reinit", "prune.select=random"),  # global RNG
])
def test_interrupted_run_resumes_bitwise_identical_without_recomputing(tmp_path, overrides):
    cfg = tiny_config("train.epochs=4", *overrides)
    whole = train(cfg, tmp_path / "whole", checkpoint_dir=tmp_path / "whole" / "checkpoint")
    assert not (tmp_path / "whole" / "checkpoint").exists()  # a finished run deletes its checkpoint

    out, ckpt = tmp_path / "cut", tmp_path / "cut" / "checkpoint"
    with pytest.raises(Interrupt):
        train(cfg, out, callbacks=[Watcher(stop_at=2)], checkpoint_dir=ckpt)
    saved = checkpoint.read_state(ckpt)
    assert saved["epoch"] == 2  # written before the callback raised
    watcher = Watcher()
    resumed = train(cfg, out, callbacks=[watcher], checkpoint_dir=ckpt, resume=True)

    assert watcher.resumed == [1, 2] and watcher.epochs == [3, 4]  # epochs 1-2 were not run again
    summary = resumed.summary
    assert summary.resumed_from_epoch == 2 and [e.epoch for e in summary.epochs] == [1, 2, 3, 4]
    assert summary.epochs[:2] == RunSummary.from_dict(saved["summary"]).epochs  # seconds included
    assert summary.final == whole.summary.final and summary.prune_events == whole.summary.prune_events
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, on the CPU
    for w, r in zip(whole.summary.epochs, summary.epochs):
        assert dataclasses.replace(w, seconds=0) == dataclasses.replace(r, seconds=0)
    on_disk = RunSummary.read(out / "summary.json")
    assert on_disk.resumed_from_epoch == 2 and len(on_disk.epochs) == 4 and not ckpt.exists()


def test_resume_after_the_last_epoch_and_resume_rules(tmp_path):
    cfg = tiny_config("train.epochs=2", "prune.schedule=none")
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupt):  # killed after the last epoch's checkpoint, before the run was wrapped up
        train(cfg, tmp_path, callbacks=[Watcher(stop_at=2)], checkpoint_dir=ckpt)
    watcher = Watcher()
    done = train(cfg, tmp_path, callbacks=[watcher], checkpoint_dir=ckpt, resume=True).summary
    assert watcher.epochs == [] and done.final.status == "completed" and done.final.epochs_run == 2
    assert (tmp_path / "model" / "model.safetensors").is_file() and not ckpt.exists()

    with pytest.raises(Interrupt):
        train(cfg, tmp_path, callbacks=[Watcher(stop_at=1)], checkpoint_dir=ckpt)
    other = tiny_config("train.epochs=3", "prune.schedule=none")
    with pytest.raises(ConfigError, match=r"another config \(train.epochs: 2 -> 3\)"):
        train(other, tmp_path, checkpoint_dir=ckpt, resume=True)
    # without resume the old checkpoint goes first; with resume but no checkpoint, training starts afresh
    with pytest.raises(Interrupt):
        train(other, tmp_path, callbacks=[Watcher(stop_at=1)], checkpoint_dir=ckpt)
    assert checkpoint.read_state(ckpt)["summary"]["config"]["train"]["epochs"] == 3
    fresh = train(cfg, tmp_path / "b", checkpoint_dir=tmp_path / "b" / "checkpoint", resume=True).summary
    assert fresh.resumed_from_epoch is None and len(fresh.epochs) == 2
