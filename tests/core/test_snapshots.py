"""Epoch snapshots of shared prefixes: the key separates every run that computes something else and joins
those that compute the same; a run forked from a snapshot ends bitwise identical to the same run from
scratch (on the CPU), also when it is interrupted after forking and resumed from its own checkpoint; a
snapshot that is not there, or that the run could not have reached, means training from scratch, saying
why; the size limit says when it bites; concurrent writers never leave half a snapshot."""

import dataclasses
import multiprocessing

import pytest
import torch

from adprune_core import checkpoint, snapshots
from adprune_core.data import load_dataset
from adprune_core.density import ChannelCounts
from adprune_core.records import BnRecalibration, EpochRecord, PruneEvent, RunSummary
from adprune_core.snapshots import Sharing, SnapshotStore, prefix_key
from adprune_core.trainer import build_optimizer, train
from tests.helpers import Interrupt, Watcher, small_model, tiny_config

EPOCHS = 3


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data)


# --- the key -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    "train.lr=0.2", "train.seed=1", "train.batch_size=32", "train.epochs=4",  # epochs: the cosine schedule
    "model.name=vgg13", "model.width_mult=0.25", "data.augment=false", "data.name=cifar10",
    "train.weight_decay=0.001", "train.amp=bf16",
])
def test_the_key_separates_runs_that_compute_something_else(data, change):
    cfg = tiny_config(f"train.epochs={EPOCHS}")
    assert prefix_key(cfg, data, 2) != prefix_key(tiny_config(f"train.epochs={EPOCHS}", change), data, 2)


@pytest.mark.parametrize("change", [
    # no prune key acts before the first cut, and these do not act at all (on this CPU)
    "prune.schedule=none", "prune.epochs=[1]", "prune.width_scale=1.5", "prune.select=random",
    "prune.transfer=reinit", "prune.warmup=0", "train.progress=true", "train.device=auto", "train.amp=off",
    "train.channels_last=off", "data.root=/elsewhere", "data.cache_dir=/tmp/cache", "data.download=false",
])
def test_the_key_joins_runs_that_compute_the_same(data, change):
    cfg = tiny_config(f"train.epochs={EPOCHS}")
    assert prefix_key(cfg, data, 2) == prefix_key(tiny_config(f"train.epochs={EPOCHS}", change), data, 2)


def test_the_key_names_the_data_content_the_epoch_and_the_arithmetic(data):
    cfg = tiny_config(f"train.epochs={EPOCHS}")
    key = prefix_key(cfg, data, 2)
    assert prefix_key(cfg, data, 1) != key
    # the same dataset name and config, one pixel different: another key
    images = data.train_images.clone()
    images[0, 0, 0, 0] ^= 1
    assert prefix_key(cfg, dataclasses.replace(data, train_images=images), 2) != key
    assert prefix_key(cfg, dataclasses.replace(data, name="other"), 2) != key
    assert prefix_key(cfg, load_dataset(tiny_config().data), 2) == key  # loaded again: the same content
    threads = torch.get_num_threads()
    try:  # CPU results depend on the number of threads (measured: 1 vs 2 threads differ after one epoch)
        torch.set_num_threads(threads + 1)
        assert prefix_key(cfg, data, 2) != key
    finally:
        torch.set_num_threads(threads)
    assert prefix_key(cfg, data, 2) == key
    events = [PruneEvent(epoch=1, densities={}, widths_before={}, widths_after={}, params_before=0, params_after=0,
                         flops_before=0, flops_after=0, kept_idxs={"g": [0, 2]}, groups={},
                         bn_recalibration=BnRecalibration(), val_top1_after_cut=0.0)]
    assert snapshots.key_of(snapshots.key_payload(cfg, data, 2, events)) != key


# --- forking in the trainer ------------------------------------------------------------------------------

def strip_seconds(summary):
    return [{k: v for k, v in e.to_dict().items() if k != "seconds"} for e in summary.epochs]


def assert_same_run(a, b):
    """Bitwise the same run: records (wall times aside), prune events, final metrics, weights."""
    assert strip_seconds(a.summary) == strip_seconds(b.summary)
    assert a.summary.prune_events == b.summary.prune_events and a.summary.final == b.summary.final
    x, y = a.model.state_dict(), b.model.state_dict()
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def store(tmp_path_factory, data):
    """Snapshots of epochs 1 and 2 written by a dense baseline (3 epochs)."""
    store = SnapshotStore(tmp_path_factory.mktemp("snapshots"))
    baseline = train(tiny_config(f"train.epochs={EPOCHS}", "prune.schedule=none"), data=data,
                     sharing=Sharing(store, frozenset({1, 2}), written_by="the baseline"))
    assert baseline.summary.snapshots_written == (1, 2) and len(store.entries()) == 2
    return store


class Forks(Watcher):
    def on_fork(self, summary):
        self.forked = [e.epoch for e in summary.epochs], summary.forked_from["epoch"]


def test_a_forked_run_is_the_run_from_scratch_also_after_an_interruption(tmp_path, data, store):
    # reinit + random channels: the cut at epoch 2 draws from the global RNG, restored from the snapshot
    cfg = tiny_config(f"train.epochs={EPOCHS}", "prune.schedule=fixed", "prune.epochs=[2]", "prune.transfer=reinit",
                      "prune.select=random")
    fresh = train(cfg, data=data)
    watcher = Forks()
    forked = train(cfg, data=data, callbacks=[watcher], sharing=Sharing(store, fork_at=2))
    assert watcher.forked == ([1], 2) and watcher.epochs == [2, 3]  # epoch 1 reused; 2's decision taken here
    fork = forked.summary.forked_from
    assert fork["epoch"] == 2 and fork["written_by"] == "the baseline" and forked.summary.fork_skipped is None
    assert fork["train_flops_cum"] == fresh.summary.epochs[1].train_flops_cum
    assert_same_run(fresh, forked)
    assert len(forked.summary.prune_events) == 1 and forked.summary.prune_events[0].epoch == 2

    # interrupted after forking (epoch 2's checkpoint written), then resumed from its own checkpoint
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(Interrupt):
        train(cfg, data=data, callbacks=[Watcher(stop_at=2)], checkpoint_dir=ckpt, sharing=Sharing(store, fork_at=2))
    watcher = Forks()
    resumed = train(cfg, tmp_path, data=data, callbacks=[watcher], checkpoint_dir=ckpt, resume=True,
                    sharing=Sharing(store, fork_at=2))
    assert watcher.resumed == [1, 2] and watcher.epochs == [3] and not hasattr(watcher, "forked")  # no second fork
    assert resumed.summary.forked_from == fork and resumed.summary.resumed_from_epoch == 2
    assert_same_run(fresh, resumed)
    assert RunSummary.read(tmp_path / "summary.json").forked_from["epoch"] == 2


def test_a_fork_the_run_could_not_have_reached_or_that_is_gone_trains_from_scratch(tmp_path, data, store):
    # saturation that settles at once (tol 1.0) prunes after epoch 2 (patience 1): the snapshot of epoch 2
    # is its prefix; where the store has none (removed, or on another machine) it trains from scratch
    cfg = tiny_config(f"train.epochs={EPOCHS}", "prune.schedule=saturation", "prune.warmup=0", "prune.patience=1",
                      "prune.density_tol=1.0")
    alone = train(cfg, data=data, sharing=Sharing(SnapshotStore(tmp_path / "elsewhere"), fork_at=2))
    assert alone.summary.fork_skipped.startswith("no snapshot") and "trained from scratch" in alone.summary.fork_skipped
    assert [e.epoch for e in alone.summary.prune_events] == [2] and alone.summary.forked_from is None
    forked = train(cfg, data=data, sharing=Sharing(store, fork_at=2))
    assert forked.summary.forked_from["epoch"] == 2
    assert_same_run(alone, forked)
    # this run would have pruned after epoch 1: the snapshot of epoch 2 is not its prefix
    early = tiny_config(f"train.epochs={EPOCHS}", "prune.schedule=fixed", "prune.epochs=[1]")
    refused = train(early, data=data, sharing=Sharing(store, fork_at=2))
    assert "prunes after epoch 1, before the snapshot's epoch 2" in refused.summary.fork_skipped
    assert refused.summary.forked_from is None and refused.summary.prune_events[0].epoch == 1


def test_the_size_limit_says_when_it_bites(tmp_path, data):
    store = SnapshotStore(tmp_path / "store")
    cfg = tiny_config("train.epochs=1", "prune.schedule=none")
    run = train(cfg, data=data, sharing=Sharing(store, frozenset({1}), max_bytes=1000))
    reason = run.summary.snapshot_skipped
    assert reason.startswith("snapshot of epoch 1 not written") and "limit is 1e-06 GB" in reason
    assert "--snapshot-gb" in reason and "make snapshots-clean" in reason
    assert store.entries() == [] and run.summary.snapshots_written == ()


# --- the store under concurrent writers ------------------------------------------------------------------

def _write_many(root, rounds, barrier):
    model = small_model("vgg11")
    optimizer = build_optimizer(model, tiny_config().train)
    sharing = Sharing(SnapshotStore(root))
    barrier.wait()
    for i in range(rounds):
        key = "k" * 64
        # written through the same path as the trainer's (has() is skipped: every round rewrites the key)
        checkpoint.save_checkpoint(sharing.store.directory(key), model=model, optimizer=optimizer, epoch=1,
                                   group_widths={}, state={"snapshot": {"round": i}})


def test_concurrent_writers_of_one_snapshot_never_leave_half_of_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), 15, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    store, seen = SnapshotStore(tmp_path), 0
    while any(p.is_alive() for p in procs):
        state = store.read_state("k" * 64)  # None before the first write; whole afterwards
        seen += state is not None and state["epoch"] == 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    saved = store.load("k" * 64)
    assert set(saved.model_state) == set(small_model("vgg11").state_dict()) and seen > 0
    assert [p.name for p in (tmp_path / ("k" * 64)).iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temporary file


def test_store_lists_and_removes(tmp_path):
    store = SnapshotStore(tmp_path / "store")
    model = small_model("vgg11")
    record = EpochRecord(epoch=1, lr=0.1, train_loss=1.0, train_top1=0.5, val_top1=0.5, densities={}, widths={},
                         params=0, flops=0, train_flops_cum=10, seconds=0.5)
    cfg = tiny_config("train.epochs=2")
    data = load_dataset(cfg.data)
    optimizer = build_optimizer(model, cfg.train)
    written, _ = snapshots.save_snapshot(Sharing(store, written_by="me"), cfg, data, model=model, optimizer=optimizer,
                                         group_widths={}, epochs=[], record=record,
                                         counts={"r": ChannelCounts((1, 2), 4)}, density_history=[{}],
                                         train_flops_cum=10)
    again, _ = snapshots.save_snapshot(Sharing(store), cfg, data, model=model, optimizer=optimizer, group_widths={},
                                       epochs=[], record=record, counts={}, density_history=[{}], train_flops_cum=10)
    assert written and not again  # the store has it: not written twice
    (entry,) = store.entries()
    assert entry.key == prefix_key(cfg, data, 1) and entry.epoch == 1 and entry.written_by == "me"
    assert entry.bytes == store.size_bytes() > 0
    assert store.remove_all() == (1, entry.bytes) and store.entries() == [] and store.root.is_dir()
