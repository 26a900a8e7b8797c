"""``adprune report`` on a real tiny study in tmp_path: real SQLite Optuna storage, real MLflow store."""

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from adprune.cli import main
from reports.load import load_study_data, registered_model_name, trial_history
from reports.report import build_report
from reports.report_cli import report_dir
from study.runner import run_study
from study.space import study_config_from_dict
from tests.helpers import optuna_uri, tracking_uri

MLFLOW_URL = "http://mlflow.example:5123"
STUDY = "tiny"
TINY = {
    "base": {"data": {"name": "synthetic", "train_size": 192, "val_size": 64, "holdout": 0.334},  # 128 train, 64 val
             "model": {"name": "vgg11", "width_mult": 0.125},
             "train": {"batch_size": 64, "lr": 0.05, "progress": False, "device": "cpu"},
             "prune": {"schedule": "saturation"}},
    "fixed": {"train.epochs": 2},
    "space": {"prune.schedule": {"type": "categorical", "choices": ["fixed", "interval"]},
              "prune.first_frac": {"type": "float", "low": 0.2, "high": 0.5},
              "prune.width_scale": {"type": "float", "low": 0.6, "high": 1.2},
              "prune.select": {"type": "categorical", "choices": ["density", "l1"]}},
    "objectives": [{"name": "val_top1", "direction": "maximize"}, {"name": "flops", "direction": "minimize"},
                   {"name": "train_flops_cum", "direction": "minimize"}],
    "sampler": {"name": "random", "seed": 3},
}
SCRATCH = {"val_top1": 0.25, "params": 1000.0, "flops": 2.0e6, "train_flops_cum": 3.0e9, "compression_params": 2.0,
           "compression_flops": 2.0}


def add_control_and_pick(runs: Path, trial: optuna.trial.FrozenTrial) -> str:
    """What ``adprune control`` and ``adprune pick`` leave in the store (their contract), made by hand."""
    client = MlflowClient(tracking_uri=tracking_uri(runs))
    exp = client.get_experiment_by_name(STUDY)
    run = client.create_run(exp.experiment_id, run_name=f"control-scratch-{trial.number}", tags={
        "adprune.role": "control", "adprune.control_of": str(trial.number), "adprune.control_kind": "scratch"})
    for key, value in SCRATCH.items():
        client.log_metric(run.info.run_id, f"final/{key}", value)
    client.set_terminated(run.info.run_id)
    name = registered_model_name(STUDY)
    client.create_registered_model(name)
    source = client.get_run(trial.user_attrs["mlflow_run_id"]).info.artifact_uri + "/model"
    version = client.create_model_version(name, source, run_id=trial.user_attrs["mlflow_run_id"])
    client.set_registered_model_alias(name, f"trial-{trial.number}", version.version)
    return run.info.run_id


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 4-trial study (the baseline + 3), a control and a pick of a Pareto trial, then ``adprune report``."""
    runs = tmp_path_factory.mktemp("report") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and far faster when the cores are shared
    try:
        run_study(study_config_from_dict(TINY), STUDY, 4, runs, progress=False, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    study = optuna.load_study(study_name=STUDY, storage=optuna_uri(runs))
    trials = study.get_trials()
    front = sorted(study.best_trials, key=lambda t: t.number)
    controlled = next((t for t in front if not t.user_attrs.get("baseline")), front[0])
    control_id = add_control_and_pick(runs, controlled)
    code = main(["report", "--runs-dir", str(runs), "--mlflow-url", MLFLOW_URL + "/"])
    return {"runs": runs, "code": code, "trials": trials, "front": front, "controlled": controlled.number,
            "control_id": control_id, "dir": report_dir(runs, STUDY),
            "client": MlflowClient(tracking_uri=tracking_uri(runs))}


@pytest.fixture(scope="module")
def report(built):
    return build_report(load_study_data(built["runs"], STUDY, MLFLOW_URL))


def test_writes_the_four_files(built):
    assert built["code"] == 0
    for name in ("index.html", "summary.md", "trials.csv", "pareto.csv"):
        assert (built["dir"] / name).stat().st_size > 0
    page = (built["dir"] / "index.html").read_text()
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=[\"']?(https?:)?//", page)  # inline: opens offline
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js itself is in the page
    assert page.count('class="plotly-graph-div"') >= 4  # 3 views + hypervolume


def test_pareto_csv_holds_exactly_the_front(built):
    pareto = pd.read_csv(built["dir"] / "pareto.csv")
    assert list(pareto["number"]) == [t.number for t in built["front"]]
    assert pareto["pareto"].all()
    md = (built["dir"] / "summary.md").read_text()
    assert f"## Pareto front ({len(built['front'])} trials)" in md


def test_trials_csv_every_trial_and_the_baseline_row(built):
    trials = pd.read_csv(built["dir"] / "trials.csv").set_index("number")
    assert list(trials.index) == [t.number for t in built["trials"]]
    base = trials.loc[0]
    assert bool(base["baseline"]) and base["state"] == "COMPLETE"
    assert (base["accuracy_change"], base["compression_flops"], base["train_compute_reduction"]) == (0, 1, 1)
    for t in built["trials"]:
        row = trials.loc[t.number]
        assert (row["val_top1"], row["flops"], row["train_flops_cum"]) == pytest.approx(tuple(t.values))
        assert row["mlflow_run_id"] == t.user_attrs["mlflow_run_id"]
        for key, value in t.params.items():
            assert row[f"search.{key}"] == (pytest.approx(value) if isinstance(value, float) else value)
        if not t.user_attrs.get("baseline"):
            assert row["compression_flops"] == pytest.approx(t.user_attrs["compression_flops"])
            assert row["train_compute_reduction"] == pytest.approx(trials.loc[0, "train_flops_cum"] / t.values[2])


def test_links_resolve_to_real_mlflow_runs(built):
    client, page = built["client"], (built["dir"] / "index.html").read_text()
    exp_id = client.get_experiment_by_name(STUDY).experiment_id
    linked = re.findall(re.escape(MLFLOW_URL) + r"/#/experiments/(\w+)/runs/(\w+)", page)
    assert {e for e, _ in linked} == {exp_id}
    run_ids = {r for _, r in linked}
    trials = pd.read_csv(built["dir"] / "trials.csv")
    assert set(trials["mlflow_run_id"]) | {built["control_id"]} <= run_ids
    for run_id in run_ids:
        assert client.get_run(run_id).info.experiment_id == exp_id
    assert (trials["mlflow_url"] == MLFLOW_URL + "/#/experiments/" + exp_id + "/runs/" + trials["mlflow_run_id"]
            + "?workflowType=machine_learning").all()


def test_report_is_logged_to_the_parent_run(built):
    study = optuna.load_study(study_name=STUDY, storage=optuna_uri(built["runs"]))
    files = {Path(a.path).name for a in built["client"].list_artifacts(study.user_attrs["mlflow_parent_run_id"],
                                                                         "report")}
    assert files == {"index.html", "summary.md", "trials.csv", "pareto.csv"}


def test_controls_and_picks_sit_beside_their_trial(built, report):
    n = built["controlled"]
    row = pd.read_csv(built["dir"] / "trials.csv").set_index("number").loc[n]
    assert row["scratch_val_top1"] == SCRATCH["val_top1"] and row["scratch_run_id"] == built["control_id"]
    assert row["val_top1_gain_vs_scratch"] == pytest.approx(row["val_top1"] - SCRATCH["val_top1"])
    assert bool(row["picked"]) and report.picked == [n]
    md = (built["dir"] / "summary.md").read_text()
    trial_line = next(i for i, line in enumerate(md.splitlines()) if line.startswith(f"| {n} "))
    assert md.splitlines()[trial_line + 1].startswith(f"| ↳ scratch control of {n} (1 seed) | 25.00% | – |")
    test_top1 = f"{100 * row['test_top1']:.2f}%"  # the trial's own row: test_top1 beside val_top1
    assert md.splitlines()[trial_line].split(" | ")[1:3] == [f"{100 * row['val_top1']:.2f}%", test_top1]
    for view in report.views:
        (control,) = [p for p in view.points if p.control]
        assert (control.number, control.control, control.run_id) == (n, "scratch", built["control_id"])
        assert (control.x, control.y) == (SCRATCH[view.x], SCRATCH[view.y])


def test_report_data_matches_the_study(built, report):
    numbers = [t.number for t in built["front"]]
    assert report.pareto == numbers and report.baseline == 0
    assert [v.points for v in report.views][0]  # something to draw
    for view in report.views:
        assert sorted(p.number for p in view.points if p.pareto and not p.control) == numbers
        assert [p.number for p in view.points if p.baseline] == [0]
    assert report.states == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0}
    values = [v for _, v in report.hv_history]
    assert [n for n, _ in report.hv_history] == [0, 1, 2, 3]
    assert 0 < values[0] <= values[-1] < 1 and values == sorted(values)
    assert report.importances.note.startswith("not enough trials")
    by_number = {t.number: t for t in built["trials"]}
    for n in numbers:  # widths before and after, densities: as the trainer recorded them
        summary = json.loads((Path(by_number[n].user_attrs["out_dir"]) / "summary.json").read_text())
        profile = report.profiles[n]
        assert dict(zip(profile.layers, profile.width_dense)) == summary["epochs"][0]["widths"]
        assert dict(zip(profile.layers, profile.width_final)) == summary["epochs"][-1]["widths"]
        assert profile.epochs == (1, 2)
        assert profile.prune_epochs == tuple(e["epoch"] for e in summary["prune_events"])
    for hit in report.edges:
        assert hit.number in numbers and hit.key in by_number[hit.number].params


def test_history_falls_back_to_mlflow_metrics(built):
    data = load_study_data(built["runs"], STUDY)
    trial = copy.deepcopy(built["trials"][built["front"][-1].number])
    summary = json.loads((Path(trial.user_attrs["out_dir"]) / "summary.json").read_text())
    trial.user_attrs = {**trial.user_attrs, "out_dir": "/nonexistent/trial-9999"}  # moved away
    epochs, prunes, source = trial_history(data, trial)
    assert source == f"MLflow run {trial.user_attrs['mlflow_run_id']} metrics"
    assert prunes == [e["epoch"] for e in summary["prune_events"]]
    assert [(e["epoch"], e["widths"], e["densities"]) for e in epochs] == [
        (e["epoch"], e["widths"], pytest.approx(e["densities"])) for e in summary["epochs"]]


def test_bad_input_is_one_line_and_exit_2(built, tmp_path, capsys):
    def error(*args):
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("adprune: error: ")
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no Optuna storage at" in error("--runs-dir", str(empty))
    assert list(empty.iterdir()) == []  # nothing created
    assert f"unknown study 'nope' in {built['runs'] / 'optuna.db'}; known: tiny" in error(
        "--runs-dir", str(built["runs"]), "--study", "nope")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("b", "a"):
        optuna.create_study(study_name=name, storage=optuna_uri(two), directions=["maximize", "minimize", "minimize"])
    assert "holds 2 studies (a, b); name one with --study NAME" in error("--runs-dir", str(two))
    err = error("--runs-dir", str(two), "--study", "a")
    assert "study 'a' in" in err and "has no trials yet" in err


CHROMIUM = Path(os.environ.get("ADPRUNE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran (5 s of virtual time), and every console line (errors, uncaught exceptions)."""
    proc = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM} (apt-get install chromium)")
def test_page_renders_in_headless_chromium_without_script_errors(built, tmp_path):
    broken = tmp_path / "broken.html"  # the check itself sees script errors
    broken.write_text("<html><body><script>console.error('bad'); notAFunction();</script></body></html>")
    _, console = chromium(broken, tmp_path / "profile-broken")
    assert any("bad" in line for line in console) and any("Uncaught ReferenceError" in line for line in console)

    page = built["dir"] / "index.html"
    dom, console = chromium(page, tmp_path / "profile")
    assert console == []
    figures = page.read_text().count('class="plotly-graph-div"')
    assert figures >= 4 and dom.count('class="main-svg"') >= 2 * figures  # plotly drew every figure
    assert "Pareto-optimal trials" in dom and "data:image/png;base64," in dom


def test_objective_names_come_from_optunas_metric_names_or_an_older_studys_attr():
    import warnings

    from adprune_core.errors import ConfigError
    from reports.study_view import objective_names

    directions = ["maximize", "minimize", "minimize"]
    old = optuna.create_study(directions=directions)
    with pytest.raises(ConfigError, match="not made by adprune study"):
        objective_names(old, "old")
    old.set_user_attr("objectives", ["val_top1 (maximize)", "flops (minimize)", "train_flops_cum (minimize)"])
    assert objective_names(old, "old") == ("val_top1", "flops", "train_flops_cum")  # made before metric_names
    new = optuna.create_study(directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new.set_metric_names(["val_top1", "params", "train_flops_cum"])
    assert objective_names(new, "new") == ("val_top1", "params", "train_flops_cum")
