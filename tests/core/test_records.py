"""The run records: round trips through dicts and files, one-line errors, and the savings' sign convention."""

from __future__ import annotations

import json
import math

import pytest

from adprune_core.errors import ADPruneError
from adprune_core.records import (
    SCHEMA_VERSION,
    BnRecalibration,
    EpochRecord,
    FinalMetrics,
    GroupDecision,
    PruneEvent,
    RecordError,
    RunSummary,
    Savings,
)


def _summary() -> RunSummary:
    epoch = EpochRecord(epoch=1, lr=0.1, train_loss=2.0, train_top1=0.25, val_top1=0.3,
                        densities={"conv1": 0.5}, widths={"conv1": 8}, params=1000, flops=4000,
                        train_flops_cum=12_000, seconds=1.5)
    event = PruneEvent(epoch=1, densities={"conv1": 0.5}, widths_before={"conv1": 8}, widths_after={"conv1": 4},
                       params_before=1000, params_after=500, flops_before=4000, flops_after=2000,
                       kept_idxs={"g0": [0, 2, 5, 7]},
                       groups={"g0": GroupDecision(0.5, 8, at_threshold=3)},
                       bn_recalibration=BnRecalibration(64, 128_000, 0.2), val_top1_after_cut=0.28)
    final = FinalMetrics(status="completed", epochs_run=2, val_top1=0.35, params=500, flops=2000,
                         train_flops_cum=30_000, params_dense=1000, flops_dense=4000, prune_rounds=1,
                         test_top1=0.33)
    return RunSummary(config={"train": {"seed": 0}}, dataset={"name": "tiny"}, device="cpu",
                      epochs=(epoch, epoch), prune_events=(event,), final=final,
                      forked_from={"epoch": 1, "key": "abc"}, snapshots_written=(1,))


def test_round_trip_through_dict_and_file(tmp_path):
    summary = _summary()
    as_dict = summary.to_dict()
    assert as_dict["schema_version"] == SCHEMA_VERSION == 1
    assert as_dict["final"]["compression_flops"] == 2.0 and as_dict["final"]["compression_params"] == 2.0
    assert as_dict["prune_events"][0]["groups"]["g0"] == {"density": 0.5, "width_before": 8, "at_threshold": 3}
    assert "resumed_from_epoch" not in as_dict  # optional keys only when set
    assert RunSummary.from_dict(json.loads(json.dumps(as_dict))) == summary
    summary.write(tmp_path / "summary.json")
    assert RunSummary.read(tmp_path / "summary.json") == summary
    assert RunSummary.read(tmp_path) == summary  # a run folder
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left


def test_final_ratios_are_dense_over_final():
    final = FinalMetrics("completed", 3, 0.5, params=250, flops=100, train_flops_cum=1, params_dense=1000,
                         flops_dense=800, prune_rounds=2)
    assert final.compression_params == 4.0 and final.compression_flops == 8.0
    assert final.with_status("stopped").status == "stopped" and final.status == "completed"


def _one_line(exc: pytest.ExceptionInfo[RecordError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and isinstance(exc.value, ADPruneError)
    return message


def test_missing_file(tmp_path):
    with pytest.raises(RecordError) as exc:
        RunSummary.read(tmp_path / "nope" / "summary.json")
    message = _one_line(exc)
    assert "nope/summary.json" in message and "no such file" in message and "re-run" in message


def test_bad_json(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"schema_version": 1, "epochs": [')
    with pytest.raises(RecordError) as exc:
        RunSummary.read(path)
    message = _one_line(exc)
    assert str(path) in message and "not a JSON run summary" in message and "restore" in message


def test_wrong_schema_version(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**_summary().to_dict(), "schema_version": 99}))
    with pytest.raises(RecordError) as exc:
        RunSummary.read(path)
    message = _one_line(exc)
    assert str(path) in message and "schema_version 99" in message and f"reads {SCHEMA_VERSION}" in message


def test_missing_field(tmp_path):
    raw = _summary().to_dict()
    del raw["epochs"][1]["val_top1"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RecordError) as exc:
        RunSummary.read(path)
    message = _one_line(exc)
    assert "epochs[1]" in message and "'val_top1'" in message and str(path) in message
    del raw["final"]
    path.write_text(json.dumps(raw))
    with pytest.raises(RecordError, match="lacks the field 'final'"):
        RunSummary.read(path)


def test_savings_by_hand():
    base = {"val_top1": 0.80, "test_top1": 0.78, "params": 1000, "flops": 600, "train_flops_cum": 900}
    pruned = {"val_top1": 0.75, "test_top1": 0.79, "params": 250, "flops": 200, "train_flops_cum": 300}
    s = Savings.of(pruned, base)
    assert s.accuracy_change == pytest.approx(-0.05)  # less accurate: negative
    assert s.accuracy_drop == pytest.approx(0.05)
    assert s.test_accuracy_change == pytest.approx(0.01)  # more accurate: positive
    assert (s.compression_params, s.compression_flops, s.train_compute_reduction) == (4.0, 3.0, 3.0)
    assert Savings.of(base, base).accuracy_change == 0.0


def test_savings_from_final_metrics_and_missing_numbers():
    final = FinalMetrics("completed", 3, 0.9, params=10, flops=20, train_flops_cum=30, params_dense=40,
                         flops_dense=80, prune_rounds=1)
    base = FinalMetrics("completed", 3, 0.8, params=40, flops=80, train_flops_cum=60, params_dense=40,
                        flops_dense=80, prune_rounds=0, test_top1=0.7)
    s = Savings.of(final, base)
    assert s.accuracy_change == pytest.approx(0.1) and s.compression_flops == 4.0
    assert math.isnan(s.test_accuracy_change)  # the trial has no test_top1
    assert all(math.isnan(v) for v in Savings.of(final, None).to_dict().values())
    assert math.isnan(Savings.of({"flops": 0}, {"flops": 5}).compression_flops)
