"""Real studies in tmp_path: real SQLite Optuna storage, real MLflow SQLite store, tiny synthetic trials."""

from pathlib import Path

import optuna
import pytest

from adprune.cli import main
from adprune_core.data import load_dataset
from study.cli import ui_command
from study.objective import Objective
from study.space import load_study_config
from study.tracking import StudyTracker
from study.trials import open_study
from tests.helpers import (
    EPOCHS,
    TINY,
    artifact_paths,
    load,
    mlflow_runs,
    optuna_uri,
    study_cli,
    tracking_uri,
    write_study,
)


def test_study_runs_tracks_and_resumes(tmp_path, capsys):
    config, runs = write_study(tmp_path), tmp_path / "runs"
    assert study_cli(config, runs, 3) == 0
    out = capsys.readouterr().out
    assert "new study 'tiny': 3 trial(s), the baseline included" in out and "Pareto front" in out

    trials = load(runs)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].user_attrs["baseline"] is True and trials[0].params == {}
    assert trials[0].user_attrs["config"]["prune"]["schedule"] == "none"
    assert all(len(t.values) == 3 for t in trials)
    for t in trials[1:]:
        assert {"prune.schedule", "prune.first_frac", "prune.rounds"} <= set(t.params)
        assert t.user_attrs["config"]["prune"]["schedule"] == t.params["prune.schedule"]
        assert [r["epoch"] for r in t.user_attrs["records"]] == [1, 2, 3]
        assert t.values[0] == t.user_attrs["final"]["val_top1"]
    assert trials[0].values[1] == trials[0].user_attrs["final"]["flops_dense"]  # the baseline is dense

    client, parents, children = mlflow_runs(runs)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert [c.data.tags["optuna.trial_state"] for c in children] == ["COMPLETE"] * 3
    assert all(c.info.status == "FINISHED" for c in children)
    for trial, child in zip(trials, children):
        run_id = child.info.run_id
        assert trial.user_attrs["mlflow_run_id"] == run_id
        assert child.data.params["train.epochs"] == str(EPOCHS)
        assert {f"search.{k}" for k in trial.params} <= set(child.data.params)
        assert len(client.get_metric_history(run_id, "val_top1")) == EPOCHS
        assert len(client.get_metric_history(run_id, "density/features.0")) == EPOCHS
        assert len(client.get_metric_history(run_id, "width/features.0")) == EPOCHS
        assert child.data.metrics["final/val_top1"] == trial.values[0]
        assert {"summary.json", "prune_events.json", "density_width.png", "model/model.safetensors",
                "model/model.json"} <= set(artifact_paths(client, run_id))
    assert children[0].data.tags["adprune.baseline"] == "true"
    assert len(client.get_metric_history(parent.info.run_id, "pareto_size")) == 3
    best = optuna.load_study(study_name="tiny", storage=optuna_uri(runs)).best_trials
    assert client.get_metric_history(parent.info.run_id, "pareto_size")[-1].value == len(best) >= 1
    assert "pareto_front.json" not in artifact_paths(client, parent.info.run_id)  # make report writes the front

    # a process killed mid-trial leaves a RUNNING trial and a RUNNING child run behind
    client.create_run(parent.info.experiment_id, run_name="zombie",
                      tags={"mlflow.parentRunId": parent.info.run_id, "optuna.trial_number": "3"})
    optuna.load_study(study_name="tiny", storage=optuna_uri(runs)).ask()
    # the same command with more trials resumes: earlier trials stay, the zombie counts as failed, one is added
    assert study_cli(config, runs, 5) == 0
    out = capsys.readouterr().out
    assert "marked 1 trial(s) left running by an interrupted process as FAIL" in out
    assert "resuming study 'tiny': 4 trial(s) done; adding 1 to reach 5" in out
    again = load(runs)
    assert len(again) == 5 and [t.values for t in again[:3]] == [t.values for t in trials]
    assert again[3].state.name == "FAIL" and "interrupted" in again[3].user_attrs["fail_reason"]
    assert again[4].state.name == "COMPLETE" and again[4].params != again[1].params  # reseeded, no replay
    client, parents, children = mlflow_runs(runs)
    assert len(parents) == 1 and len(children) == 5 and parents[0].info.status == "FINISHED"
    assert children[3].info.run_name == "zombie" and children[3].info.status == "FAILED"
    assert children[4].data.tags["optuna.trial_number"] == "4" and children[4].info.status == "FINISHED"
    assert len(client.get_metric_history(parents[0].info.run_id, "pareto_size")) == 4
    # nothing left to do
    assert study_cli(config, runs, 5) == 0
    assert "nothing to run" in capsys.readouterr().out and len(load(runs)) == 5


def test_same_seed_gives_same_suggestions(tmp_path):
    config, runs = write_study(tmp_path), tmp_path / "runs"
    for name in ("a", "b"):
        assert study_cli(config, runs, 3, name, "--seed", "11") == 0
    a, b = load(runs, "a"), load(runs, "b")
    assert [t.params for t in a] == [t.params for t in b]
    assert a[1].params != a[2].params  # the sampler did sample


def run_trials(cfg, runs: Path, name: str, n: int, completed=()):
    """Run ``n`` trials of ``cfg`` (no baseline) after adding hand-made COMPLETE trials."""
    study = open_study(cfg, name, runs)
    for values, records in completed:
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs={"records": records, "epochs": EPOCHS}))
    tracker = StudyTracker(runs, name, cfg.objective_names, cfg.directions)
    tracker.open(study, {"name": name})
    objective = Objective(cfg, load_dataset(cfg.trainer.data), runs / "studies" / name, tracker, progress=False)
    study.optimize(objective, n_trials=n, catch=(Exception,), callbacks=[tracker.after_trial])
    tracker.close()
    return study.get_trials()[len(completed):], tracker.client


def records(val, flops, cum):
    return [{"epoch": e, "val_top1": val, "params": 1, "flops": flops, "train_flops_cum": cum * e}
            for e in range(1, EPOCHS + 1)]


def test_dominated_trial_stopper(tmp_path):
    cfg = load_study_config(write_study(tmp_path, stopper={"check_at": [0.5], "margin": 0.05}))
    runs = tmp_path / "runs"
    # a completed trial that beat everything by far at epoch 2: the new trial stops there, PRUNED
    (pruned,), client = run_trials(cfg, runs, "hopeless", 1, [((1.0, 1.0, 3.0), records(1.0, 1.0, 1.0))])
    assert pruned.state.name == "PRUNED"
    reason = pruned.user_attrs["stop_reason"]
    assert reason.startswith("dominated at epoch 2 by trial 0") and pruned.user_attrs["status"] == "stopped"
    assert [r["epoch"] for r in pruned.user_attrs["records"]] == [1, 2]
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.trial_state"] == "PRUNED"
    assert run.data.tags["adprune.stop_reason"] == reason
    # a completed trial that was worse everywhere: the new trial runs to the end
    (good,), _ = run_trials(cfg, runs, "hopeful", 1, [((0.0, 1e15, 1e20), records(0.0, 1e15, 1e20))])
    assert good.state.name == "COMPLETE" and "stop_reason" not in good.user_attrs
    assert len(good.user_attrs["records"]) == EPOCHS


@pytest.mark.parametrize(("space", "needle", "epochs_run"), [
    # torchvision models refuse width_mult (base: 0.125) when built, i.e. inside the trial
    ({"model.name": {"type": "categorical", "choices": ["torchvision:resnet18"]}}, "ConfigError: model.width_mult", 0),
    ({"train.lr": {"type": "categorical", "choices": [1.0e12]}}, "diverged at epoch 1", 1),
])
def test_failed_trials_record_why_and_the_study_goes_on(tmp_path, space, needle, epochs_run):
    # a space of this key alone: the base's fixed prune at epoch 1 keeps it a space that can prune
    base = {**TINY["base"], "prune": {"schedule": "fixed", "epochs": [1]}}
    cfg = load_study_config(write_study(tmp_path, space=space, base=base))
    trials, client = run_trials(cfg, tmp_path / "runs", "failing", 2)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # the second trial ran after the first failed
    for t in trials:
        assert needle in t.user_attrs["fail_reason"]
        assert len(t.user_attrs.get("records", [])) == epochs_run
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and run.data.tags["optuna.trial_state"] == "FAIL"
        assert needle in run.data.tags["adprune.fail_reason"]


@pytest.mark.parametrize(("changes", "needle"), [
    ({"sampler": {"name": "annealing"}}, "sampler.name: unknown sampler 'annealing'; known: nsga2, random, tpe"),
    ({"space": {"prune.bogus": {"type": "int", "low": 1, "high": 2}}}, "space: prune.bogus is not a trainer key"),
    ({"pruner": {"name": "median"}}, "unknown key 'pruner' in study file"),
    ({"sampler": {"name": "nsga2", "population_size": 1}}, "sampler.population_size: 1 is below the minimum 2; use 2"),
])
def test_bad_study_files_exit_2_with_one_line(tmp_path, capsys, changes, needle):
    assert study_cli(write_study(tmp_path, **changes), tmp_path / "runs", 2) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("adprune: error: ")
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was created


def test_cli_errors_for_presets_trials_and_stores(tmp_path, capsys):
    assert main(["study", "--dataset", "mnist", "--runs-dir", str(tmp_path)]) == 2
    assert "no study preset for dataset 'mnist'" in capsys.readouterr().err
    assert main(["study", "--config", str(write_study(tmp_path)), "--trials", "0", "--runs-dir", str(tmp_path)]) == 2
    assert "--trials: 0 must be >= 1" in capsys.readouterr().err
    assert main(["ui", "--runs-dir", str(tmp_path / "empty")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_ui_command_serves_the_sqlite_store_on_localhost(tmp_path):
    cmd = ui_command(tmp_path, 5123)
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    assert uri == tracking_uri(tmp_path) and uri.startswith(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}?")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
