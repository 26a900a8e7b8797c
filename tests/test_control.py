"""``adprune control``: the uniform-width search, the control config, and scratch + uniform controls end to end."""

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from adprune_core.config import ModelConfig
from adprune_core.costs import inference_flops
from adprune_core.errors import ConfigError
from adprune_core.models import build_model
from reports.control import (
    CONTRACT_METRICS,
    comparison_rows,
    control_config,
    format_comparison,
    match_flops,
    uniform_width_mult,
    verdict,
)
from tests.helpers import optuna_uri, tracking_uri
from tests.pick_study import NAME, adprune, build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory)


def steps(m: float) -> int:
    """A monotone step function like FLOPs(width_mult): 1000 x round(100 m)^2."""
    return 1000 * round(100 * m) ** 2


@pytest.mark.parametrize(("target", "want"), [
    (225_000, 0.15),  # exactly a step: 15^2 x 1000
    (240_000, 0.15),  # 15k above 15^2 x 1000, 16k below 16^2 x 1000
    (241_000, 0.16),  # 16k above, 15k below
    (1_000, 0.01),  # the smallest width_mult allowed
    (40_000_000, 2.0),  # beyond the first guess (hi = 1): hi doubles
])
def test_match_flops_finds_the_nearest_step(target, want):
    found = match_flops(steps, target)
    best = min((steps(k / 100) for k in range(1, 1601)), key=lambda f: (abs(f - target), -f))
    assert found.flops == best and found.target_flops == target
    assert round(100 * found.width_mult) == round(100 * want)


def test_match_flops_beyond_the_range_stops_at_its_ends():
    assert match_flops(steps, 1).width_mult == 0.01  # even the narrowest network is bigger
    huge = match_flops(steps, 10**12)
    assert huge.width_mult == 16.0 and huge.flops == steps(16.0)


def test_uniform_width_matches_a_vgg11_flops_target_within_a_few_percent():
    cfg = ModelConfig(name="vgg11", width_mult=1.0)
    dense = inference_flops(build_model(cfg, 10, (3, 32, 32)), (3, 32, 32))
    for fraction in (0.1, 0.3, 0.6):
        match = uniform_width_mult(cfg, 10, (3, 32, 32), int(fraction * dense))
        assert abs(match.relative_error) < 0.03, (fraction, match)
        assert match.width_mult < 1.0 and match.evaluations < 40
        built = build_model(ModelConfig(name="vgg11", width_mult=match.width_mult), 10, (3, 32, 32))
        assert inference_flops(built, (3, 32, 32)) == match.flops


def test_torchvision_models_have_no_uniform_control():
    with pytest.raises(ConfigError, match="no uniform-width control; run the scratch control only"):
        uniform_width_mult(ModelConfig(name="torchvision:resnet18"), 10, (3, 32, 32), 1000)


def test_control_config_turns_pruning_off_and_keeps_the_rest():
    trial = {"data": {"name": "synthetic"}, "model": {"name": "vgg11", "width_mult": 0.5},
             "train": {"epochs": 7, "seed": 3}, "prune": {"schedule": "fixed", "epochs": [2, 4], "width_scale": 1.2}}
    cfg = control_config(trial)
    assert cfg.prune.schedule == "none" and cfg.prune.epochs == () and cfg.prune.width_scale == 1.2
    assert cfg.train.epochs == 7 and cfg.train.seed == 3 and cfg.model.width_mult == 0.5
    assert control_config(trial, width_mult=0.2).model.width_mult == 0.2
    assert trial["prune"]["schedule"] == "fixed"  # not mutated


def test_the_comparison_table_and_verdict():
    rows = [{"label": "trial 3 (pruned in training)", "val_top1": 0.80, "params": 1000, "flops": 2e6,
             "train_flops_cum": 6e9},
            {"label": "scratch (same widths)", "val_top1": 0.75, "params": 1000, "flops": 2e6, "train_flops_cum": 3e9},
            {"label": "baseline (dense, trial 0)", "val_top1": 0.85, "params": 4000, "flops": 8e6,
             "train_flops_cum": 12e9}]
    table = format_comparison(rows)
    assert table.splitlines()[2].split()[-5:] == ["0.7500", "-0.0500", "1,000", "2e+06", "3e+09"]
    assert verdict(rows) == ["vs scratch (same widths): pruning in training paid in accuracy (+0.0500 val_top1) at "
                             "2.00x its training compute"]


def test_scratch_and_uniform_controls_are_tracked_runs_with_the_contract(tiny, capsys, monkeypatch):
    n, runs = tiny.pruned, tiny.runs
    assert adprune(monkeypatch, "control", "--runs-dir", str(runs), "--study", NAME, "--trial", str(n),
                   "--uniform") == 0
    out = capsys.readouterr().out
    assert "scratch (same widths)" in out and "uniform (width_mult" in out and f"trial {n} (pruned in training)" in out
    assert "vs scratch (same widths): pruning in training" in out

    study = optuna.load_study(study_name=NAME, storage=optuna_uri(runs))
    trial = study.trials[n]
    final = trial.user_attrs["final"]
    client = MlflowClient(tracking_uri=tracking_uri(runs))
    exp = client.get_experiment_by_name(NAME)
    found = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`adprune.role` = 'control' and tags.`adprune.control_of` = '{n}'"))
    by_kind = {r.data.tags["adprune.control_kind"]: r for r in found}
    assert set(by_kind) == {"scratch", "uniform"} and len(found) == 2
    for kind, run in by_kind.items():
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{n:04d}-{kind}"
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
        assert {f"final/{k}" for k in CONTRACT_METRICS} <= set(run.data.metrics)
        m = {k: run.data.metrics[f"final/{k}"] for k in CONTRACT_METRICS}
        assert m["compression_params"] == pytest.approx(final["params_dense"] / m["params"])
        assert m["compression_flops"] == pytest.approx(final["flops_dense"] / m["flops"])
        assert len(client.get_metric_history(run.info.run_id, "val_top1")) == trial.user_attrs["epochs"]
        assert run.data.params["prune.schedule"] == "none"
        assert run.data.params["train.epochs"] == str(trial.user_attrs["config"]["train"]["epochs"])
        summary = json.loads((runs / "studies" / NAME / "controls" / f"trial-{n:04d}-{kind}" / "summary.json")
                             .read_text())
        assert summary["final"]["status"] == "completed" and summary["final"]["prune_rounds"] == 0

    scratch, uniform = by_kind["scratch"].data.metrics, by_kind["uniform"].data.metrics
    # the scratch control is the trial's final architecture, freshly trained
    assert scratch["final/params"] == final["params"] and scratch["final/flops"] == final["flops"]
    arch = json.loads((Path(trial.user_attrs["out_dir"]) / "model" / "model.json").read_text())
    summary = json.loads((runs / "studies" / NAME / "controls" / f"trial-{n:04d}-scratch" / "summary.json").read_text())
    assert summary["init_widths"] == arch["group_widths"]
    # the uniform control has (nearly) the trial's FLOPs with one width multiplier
    width_mult = float(by_kind["uniform"].data.params["control.width_mult"])
    assert width_mult < trial.user_attrs["config"]["model"]["width_mult"]
    assert abs(uniform["final/flops"] / final["flops"] - 1) < 0.1
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["adprune.control_scratch"] == \
        by_kind["scratch"].info.run_id


@pytest.mark.parametrize(("which", "needle"), [
    ("baseline", "is the dense baseline: it has no pruned architecture to retrain"),
    ("failed", "is FAIL"),
    ("none", "--trial N is required (make control TRIAL=n)"),
])
def test_bad_controls_are_one_line_errors(tiny, capsys, monkeypatch, which, needle):
    number = {"baseline": ["--trial", "0"], "failed": ["--trial", str(tiny.failed)], "none": []}[which]
    assert adprune(monkeypatch, "control", "--runs-dir", str(tiny.runs), *number) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: ") and len(err.splitlines()) == 1 and needle in err


def test_comparison_rows_come_from_the_trial_the_controls_and_the_baseline():
    class T:
        def __init__(self, number, **final):
            self.number, self.user_attrs = number, {"final": final}

    class C:
        kind, width_match = "scratch", None
        metrics = {"val_top1": 0.4, "params": 5, "flops": 6, "train_flops_cum": 7}

    rows = comparison_rows(T(3, val_top1=0.5, params=5, flops=6, train_flops_cum=9), [C()],
                           T(0, val_top1=0.6, params=20, flops=30, train_flops_cum=40))
    assert [r["label"] for r in rows] == ["trial 3 (pruned in training)", "scratch (same widths)",
                                          "baseline (dense, trial 0)"]
    assert [r["val_top1"] for r in rows] == [0.5, 0.4, 0.6]
