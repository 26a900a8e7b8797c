"""Shared-prefix trials in real studies (real SQLite Optuna storage, real MLflow store, tiny synthetic trials):
the same seeded study run through ``adprune study`` with sharing and with ``--no-share`` gives, trial by
trial, the same values, widths, kept channels and per-epoch records (wall times aside) and the same
networks; the shared one forks its trials and says what that saved. Plus the pure pieces: the fork points
of a space, the choice of the fork, the stopper's verdict on reused records."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from adprune.cli import main
from adprune_core.config import load_config
from adprune_core.data import load_dataset
from adprune_core.records import EpochRecord, FinalMetrics, RunSummary
from adprune_core.snapshots import Sharing, SnapshotStore, save_snapshot
from adprune_core.trainer import build_optimizer
from reports.load import load_study_data
from reports.render import render_markdown
from reports.report import build_report
from study.sharing import choose_fork, fork_epochs, plan_trial, sharing_totals, trial_sharing
from study.space import load_study_config, study_config_from_dict
from study.stopping import DominatedTrialStopper
from study.trial_record import TrialRecord
from tests.helpers import ROOT, TINY, load, mlflow_runs, small_model, study_cli, trial_path, write_study

EPOCHS = 3
# Every schedule, first prunes after epoch 1 or 2 of 3, and a stopper without margin at epoch 2: it
# compares the dense prefix of later trials with the pruned runs that completed before them. The seed
# draws saturation (warm-up 2, reinit, l1), interval (from 1, inherit) and fixed (at 2, reinit, random).
SHARED = {
    "fixed": {"train.epochs": EPOCHS},
    "space": {"prune.schedule": {"type": "categorical", "choices": ["fixed", "interval", "saturation"]},
              "prune.first_frac": {"type": "float", "low": 0.3, "high": 0.7},
              "prune.rounds": {"type": "int", "low": 1, "high": 2},
              "prune.patience": {"type": "int", "low": 1, "high": 2, "when": {"prune.schedule": "saturation"}},
              "prune.density_tol": {"type": "float", "low": 0.01, "high": 0.5, "log": True,
                                    "when": {"prune.schedule": "saturation"}},
              "prune.select": {"type": "categorical", "choices": ["density", "l1", "random"]},
              "prune.transfer": {"type": "categorical", "choices": ["inherit", "reinit"]}},
    "sampler": {"name": "random", "seed": 8},  # its draws give every schedule in the 3 searched trials
    "stopper": {"check_at": [0.5], "margin": 0.0},
}
TRIALS = 4


def trial_summary(runs: Path, study: str, number: int) -> dict:
    return json.loads((trial_path(runs, number, study) / "summary.json").read_text())


def without_seconds(summary: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in summary["epochs"]]


def test_a_shared_study_is_the_study_trained_from_scratch(tmp_path, capsys):
    config, runs = write_study(tmp_path, **SHARED), tmp_path / "runs"
    assert study_cli(config, runs, TRIALS, "shared") == 0
    shared_out = capsys.readouterr().out
    assert study_cli(config, runs, TRIALS, "scratch", "--no-share") == 0
    scratch_out = capsys.readouterr().out
    shared, scratch = load(runs, "shared"), load(runs, "scratch")

    assert len(shared) == len(scratch) == TRIALS
    for a, b in zip(shared, scratch):
        assert (a.number, a.state, a.params, a.values) == (b.number, b.state, b.params, b.values)
        assert a.user_attrs["records"] == b.user_attrs["records"]
        assert a.user_attrs.get("stop_reason") == b.user_attrs.get("stop_reason")
        sa, sb = trial_summary(runs, "shared", a.number), trial_summary(runs, "scratch", b.number)
        assert without_seconds(sa) == without_seconds(sb)  # widths, densities, accuracies, compute per epoch
        assert sa["prune_events"] == sb["prune_events"] and sa["final"] == sb["final"]  # kept channels included
        weights = [trial_path(runs, a.number, s) / "model" / "model.safetensors" for s in ("shared", "scratch")]
        assert weights[0].read_bytes() == weights[1].read_bytes()  # the same network, bit for bit
        assert b.user_attrs["reused_epochs"] == 0 and TrialRecord.from_trial(b).forked_from is None
        assert b.user_attrs["train_flops_spent"] == b.user_attrs["final"]["train_flops_cum"]
    assert {t.params.get("prune.schedule") for t in shared[1:]} == {"fixed", "interval", "saturation"}

    # the shared study forked its trials: each from the latest snapshot at or before its first prune decision
    forked = [t for t in shared if t.user_attrs["reused_epochs"]]
    assert len(forked) >= TRIALS - 2, [t.user_attrs.get("fork_skipped") for t in shared]
    for t in forked:
        e, summary = t.user_attrs["reused_epochs"], trial_summary(runs, "shared", t.number)
        prunes = [p["epoch"] for p in summary["prune_events"]]
        assert not prunes or e <= prunes[0]
        assert t.user_attrs["forked_from"].startswith("study 'shared' trial 0, epoch")
        cum = t.user_attrs["final"]["train_flops_cum"]
        assert t.user_attrs["train_flops_spent"] == cum - t.user_attrs["records"][e - 1]["train_flops_cum"] > 0
        writer = trial_summary(runs, "shared", 0)["epochs"]  # the baseline trained the reused epochs
        assert summary["epochs"][:e - 1] == writer[:e - 1]  # their records as it measured them, seconds included
        assert t.user_attrs["reused_seconds"] == pytest.approx(sum(r["seconds"] for r in writer[:e]), abs=0.5)
    assert shared[0].user_attrs["reused_epochs"] == 0  # the baseline wrote the snapshots
    assert "reused epoch" in shared_out and "reused epoch" not in scratch_out
    totals = sharing_totals(shared)
    assert totals.forked == len(forked) and totals.train_flops_spent < totals.train_flops_cum
    assert f"shared prefixes: {len(forked)} of {TRIALS} trial(s) forked from a snapshot" in shared_out
    assert "shared prefixes: 0 of" in scratch_out

    # MLflow: a forked trial's run holds every epoch's metrics, the reused ones at their steps
    client, parents, children = mlflow_runs(runs, "shared")
    for t, run in zip(shared, children):
        if t.user_attrs["reused_epochs"]:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")]
            assert sorted(steps) == [r["epoch"] for r in t.user_attrs["records"]]
            assert run.data.tags["adprune.reused_epochs"] == str(t.user_attrs["reused_epochs"])
            assert run.data.metrics["train_flops_spent"] == t.user_attrs["train_flops_spent"]
    saved = client.get_metric_history(parents[0].info.run_id, "sharing/train_flops_saved")
    assert max(m.value for m in saved) == pytest.approx(totals.train_flops_saved)

    # the report says it too; the snapshots are listed, and removed only on request
    report = build_report(load_study_data(runs, "shared"))
    assert report.sharing == totals and "shared prefixes:" in render_markdown(report)
    assert {r["number"]: r["reused_epochs"] for r in report.rows} == {t.number: t.user_attrs["reused_epochs"]
                                                                      for t in shared}
    store = SnapshotStore(runs / "snapshots")
    epochs = sorted(e.epoch for e in store.entries())
    assert epochs == list(fork_epochs(load_study_config(config))) == [1, 2]
    assert {e.written_by for e in store.entries()} == {"study 'shared' trial 0"}  # none by --no-share
    assert main(["snapshots", "--runs-dir", str(runs)]) == 0
    listing = capsys.readouterr().out
    assert f"{runs / 'snapshots'}: 2 snapshot(s)" in listing and "study 'shared' trial 0" in listing
    assert main(["snapshots", "--runs-dir", str(runs), "--remove"]) == 0
    assert "removed 2 snapshot(s)" in capsys.readouterr().out and store.entries() == []


def test_bad_share_settings_exit_2_with_one_line(tmp_path, capsys):
    config = write_study(tmp_path)
    for extra, needle in ((["--snapshot-gb", "-1"], "share.snapshot_gb: -1.0 must be a number of GB >= 0"),
                          (["--set", "share.enabled=maybe"], "share.enabled: 'maybe' must be true or false"),
                          (["--set", "share.size=1"], "unknown key 'size' in share")):
        assert study_cli(config, tmp_path / "runs", 2, "tiny", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# --- the pure pieces -----------------------------------------------------------------------------------

def space(schedules, low=0.2, high=0.5, epochs=10, **extra):
    return study_config_from_dict({**TINY, "fixed": {"train.epochs": epochs}, "space": {
        "prune.schedule": {"type": "categorical", "choices": schedules},
        "prune.first_frac": {"type": "float", "low": low, "high": high},
        **extra}})


def test_fork_epochs_are_where_trials_of_the_space_can_first_prune():
    assert fork_epochs(space(["fixed", "interval"])) == (2, 3, 4, 5)  # round(0.2 x 10) .. round(0.5 x 10)
    assert fork_epochs(space(["fixed"], 0.15, 0.25)) == (2, 3)  # 1.5 rounds up to 2, 2.5 to 3
    # a saturation trial prunes first anywhere from max(warmup, patience + 1) to the second-to-last epoch
    patience = {"prune.patience": {"type": "int", "low": 2, "high": 4, "when": {"prune.schedule": "saturation"}}}
    assert fork_epochs(space(["saturation"], 0.1, 0.2, **patience)) == tuple(range(3, 10))
    assert fork_epochs(space(["none"])) == ()
    assert fork_epochs(load_study_config(ROOT / "configs/study/synthetic-vgg11.yaml")) == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(("available", "first_prune", "first_stop", "expected"), [
    ([1, 2, 3, 4], 3, None, 3),  # the trial's own decision at 3 is taken live
    ([1, 2, 4], 3, None, 2),  # no snapshot at 3: the latest before it
    ([1, 2, 3, 4], None, None, 4),  # no prune within the snapshots (or the baseline): the latest
    ([1, 2, 3, 4], 3, 2, 2),  # the stopper would stop it after epoch 2: its verdict there is taken live
    ([2, 3], 1, None, None),  # prunes before every snapshot: from scratch
    ([], 3, None, None),
])
def test_choose_fork(available, first_prune, first_stop, expected):
    assert choose_fork(available, first_prune, first_stop) == expected


def records(val_top1, flops=10.0, cum=100.0, epochs=4):
    return [{"epoch": e, "val_top1": val_top1[e - 1], "params": 1, "flops": flops, "train_flops_cum": cum * e}
            for e in range(1, epochs + 1)]


def epoch_record(rec):
    """A ``records`` entry as the trainer hands it to a callback or a snapshot."""
    return EpochRecord(**rec, lr=0.1, train_loss=1.0, train_top1=0.5, densities={}, widths={}, seconds=1.0)


def test_the_stopper_says_where_it_would_stop_without_stopping():
    names, directions = ("val_top1", "flops", "train_flops_cum"), ("maximize", "minimize", "minimize")
    # trial 7 completed: at epoch 2 it had 0.5 accuracy with half the FLOPs and compute
    stopper = DominatedTrialStopper(names, directions, [2, 3], 0.0, {7: records([0.3, 0.5, 0.6, 0.7], 5.0, 50.0)})
    assert stopper.first_stop(records([0.2, 0.6, 0.7, 0.9])) is None  # more accurate at both checks (not at 1)
    assert stopper.first_stop(records([0.2, 0.4, 0.7, 0.9])) == 2  # dominated at epoch 2
    assert stopper.first_stop(records([0.2, 0.6, 0.55, 0.9])) == 3  # dominated at epoch 3 (0.55 < 0.6)
    assert stopper.reason is None  # asking changed nothing
    assert stopper.on_epoch_end(epoch_record(records([0.2, 0.4, 0.7, 0.9])[1])).startswith(
        "dominated at epoch 2 by trial 7")


def test_plan_trial_forks_before_the_first_prune_and_the_first_stop(tmp_path):
    """Snapshots of epochs 1-3 of a 5-epoch prefix, made by hand: densities settle after epoch 3, and a
    completed trial dominates the prefix's record of epoch 2."""
    base = load_config(None, ["data.train_size=64", "data.val_size=32", "train.epochs=5", "train.device=cpu",
                              "model.width_mult=0.125"])
    data = load_dataset(base.data)
    model = small_model("vgg11")
    store = SnapshotStore(tmp_path)
    history = [{"a": d} for d in (0.9, 0.5, 0.49)]  # moves 0.4 then 0.01
    prefix = [epoch_record(r) for r in records([0.1, 0.2, 0.3], epochs=3)]
    for e in (1, 2, 3):
        save_snapshot(Sharing(store), base, data, model=model, optimizer=build_optimizer(model, base.train),
                      group_widths={}, epochs=prefix[:e - 1], record=prefix[e - 1], counts={},
                      density_history=history[:e],
                      train_flops_cum=100 * e)

    def plan(*overrides, stopper=None):
        cfg = load_config(None, ["data.train_size=64", "data.val_size=32", "train.epochs=5", "train.device=cpu",
                                 "model.width_mult=0.125", *overrides])
        return plan_trial(store, cfg, data, [1, 2, 3, 4], stopper, None, "me")

    assert plan("prune.schedule=fixed", "prune.epochs=[2]").sharing.fork_at == 2
    assert plan("prune.schedule=fixed", "prune.epochs=[4]").sharing.fork_at == 3  # no snapshot of 4 yet
    settles = ("prune.schedule=saturation", "prune.warmup=1", "prune.patience=1", "prune.density_tol=0.05")
    assert plan(*settles).sharing.fork_at == 3  # replayed: settled after epoch 3
    assert plan("prune.schedule=none").sharing.fork_at == 3
    names, directions = ("val_top1", "flops", "train_flops_cum"), ("maximize", "minimize", "minimize")
    stopper = DominatedTrialStopper(names, directions, [2], 0.0, {9: records([0.5, 0.5, 0.5], 5.0, 50.0, epochs=3)})
    assert plan(*settles, stopper=stopper).sharing.fork_at == 2  # the stopper stops it after epoch 2
    other = plan("train.lr=0.3")  # another prefix: nothing to fork from, but snapshots to write
    assert other.sharing.fork_at is None and other.no_fork.startswith("no snapshot of this trial's prefix")
    assert other.sharing.save_at == frozenset({1, 2, 3, 4})


def test_trial_sharing_accounting():
    final = FinalMetrics(status="completed", epochs_run=5, val_top1=0.5, params=10, flops=20, train_flops_cum=1000,
                         params_dense=40, flops_dense=80, prune_rounds=1)
    summary = RunSummary(config={}, final=final,
                         forked_from={"epoch": 3, "key": "ab" * 32, "written_by": "study 'x' trial 0",
                                      "train_flops_cum": 600, "seconds": 12.5})
    assert trial_sharing(summary) == TrialRecord(reused_epochs=3, forked_from="study 'x' trial 0, epoch 3 (snapshot "
                                                 "abababababab)", train_flops_spent=400, reused_seconds=12.5)
    assert trial_sharing(RunSummary(config={}, final=final)) == TrialRecord(
        reused_epochs=0, forked_from=None, train_flops_spent=1000, reused_seconds=0.0)

    def trial(number, record):
        return SimpleNamespace(number=number, user_attrs=record.to_attrs())

    totals = sharing_totals([trial(1, TrialRecord(reused_epochs=3, train_flops_spent=400, reused_seconds=12.5,
                                                  final=final)),
                             trial(2, TrialRecord(reused_epochs=0, train_flops_spent=1000, final=final)),
                             trial(3, TrialRecord(records=()))])  # a trial that never finished: left out
    assert (totals.trials, totals.forked, totals.reused_epochs) == (2, 1, 3)
    assert (totals.train_flops_cum, totals.train_flops_spent, totals.train_flops_saved) == (2000, 1400, 600)
    assert totals.compute_ratio == pytest.approx(2000 / 1400) and totals.reused_seconds == 12.5

