"""Trials that never prune: the space cannot propose one that provably cannot, and one that just did not
(densities never settled) is marked everywhere and kept off the front. Real tiny studies in tmp_path."""

import copy
import os
import re
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adprune.cli import main
from adprune_core.config import PruneConfig
from adprune_core.policy import earliest_prune_epoch
from reports.load import load_study_data
from reports.render import render_html, render_markdown
from reports.report import build_report
from study.space import load_study_config, prune_window_note, prune_windows, study_config_from_dict, trial_config
from tests.helpers import ROOT, TINY, optuna_uri, tracking_uri


@pytest.mark.parametrize(("prune", "epochs", "expected"), [
    ({"schedule": "none"}, 10, None),
    ({"schedule": "fixed", "epochs": (3, 6)}, 10, 3),
    ({"schedule": "fixed", "epochs": (3,), "max_rounds": 0}, 10, None),
    ({"schedule": "interval", "warmup": 4, "interval": 3}, 10, 4),
    ({"schedule": "interval", "warmup": 0, "interval": 3}, 10, 3),  # epochs 3, 6, 9
    ({"schedule": "interval", "warmup": 10, "interval": 3}, 10, None),  # never before the last epoch
    ({"schedule": "saturation", "warmup": 1, "patience": 2}, 10, 3),  # needs 3 epochs of history
    ({"schedule": "saturation", "warmup": 5, "patience": 2}, 10, 5),
    ({"schedule": "saturation", "warmup": 1, "patience": 1}, 2, None),  # epoch 2 is the last
    ({"schedule": "saturation", "warmup": 1, "patience": 1}, 3, 2),
])
def test_earliest_prune_epoch(prune, epochs, expected):
    assert earliest_prune_epoch(PruneConfig(**prune), epochs) == expected


def test_searched_patience_is_capped_so_saturation_can_fire():
    cfg = study_config_from_dict(copy.deepcopy(TINY))  # 3 epochs
    params = {"prune.schedule": "saturation", "prune.first_frac": 0.3, "prune.patience": 4}
    trainer = trial_config(params, cfg.trainer)
    assert trainer.prune.patience == 1  # E - 2
    assert earliest_prune_epoch(trainer.prune, trainer.train.epochs) == 2
    # a patience the trainer preset fixes is its own business: not capped
    assert trial_config({"prune.schedule": "saturation"}, cfg.trainer.replace(
        prune=PruneConfig(schedule="saturation", patience=4))).prune.patience == 4


def test_a_space_that_cannot_prune_is_refused_at_load_through_the_cli(capsys):
    code = main(["study", "--dataset", "tinyimagenet", "--model", "resnet18", "--epochs", "2", "--trials", "2",
                 "--runs-dir", "/nonexistent/never-written"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "prune.schedule='saturation' gives a trial that cannot prune within train.epochs=2" in err
    assert "use more epochs (EPOCHS=)" in err


def test_start_line_says_how_many_epochs_each_schedule_leaves():
    short = load_study_config(ROOT / "configs/study/tinyimagenet-resnet18.yaml", ["train.epochs=4"])
    # first_frac 0.1-0.5 of 4 epochs: after epoch 1-2; saturation also waits for patience (1-4, capped at
    # E - 2 = 2) + 1 epochs of history: after epoch max(1, 2) = 2 to max(2, 3) = 3
    assert prune_windows(short) == {"fixed": (1, 2), "saturation": (2, 3), "interval": (1, 2)}
    note = prune_window_note(short)
    assert note.startswith("note: 4 epochs per trial") and "saturation after epoch 2-3 (1-2 epoch(s) left" in note
    long = load_study_config(ROOT / "configs/study/tinyimagenet-resnet18.yaml")  # 30 epochs: nothing to say
    assert prune_window_note(long) is None


NEVER = copy.deepcopy(TINY)
NEVER["fixed"] = {"train.epochs": 4}
NEVER["space"] = {"prune.schedule": {"type": "categorical", "choices": ["fixed", "saturation"]},
                  "prune.first_frac": {"type": "float", "low": 0.25, "high": 0.5},
                  # densities never move by less than 1e-12 from epoch to epoch: saturation never fires
                  "prune.density_tol": {"type": "float", "low": 1e-12, "high": 2e-12,
                                        "when": {"prune.schedule": "saturation"}}}
NEVER["sampler"] = {"name": "random", "seed": 1}


@pytest.fixture(scope="module")
def never_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("never")
    (root / "never.yaml").write_text(yaml.safe_dump(NEVER, sort_keys=False))
    runs = root / "runs"
    proc = subprocess.run([sys.executable, "-m", "adprune", "study", "--config", str(root / "never.yaml"),
                           "--runs-dir", str(runs), "--trials", "5", "--name", "never", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    study = optuna.load_study(study_name="never", storage=optuna_uri(runs))
    return {"code": proc.returncode, "out": proc.stdout + proc.stderr, "runs": runs, "study": study,
            "trials": study.get_trials()}


def test_a_trial_that_made_no_cut_is_marked_and_kept_off_the_front(never_study):
    assert never_study["code"] == 0
    trials = [t for t in never_study["trials"] if t.state.name == "COMPLETE"]
    never = [t for t in trials if t.params.get("prune.schedule") == "saturation"]
    pruned = [t for t in trials if t.params.get("prune.schedule") == "fixed"]
    assert never and pruned, "the random sampler should have drawn both schedules in 4 trials"
    for t in never:
        assert t.user_attrs["never_pruned"] is True and t.user_attrs["final"]["prune_rounds"] == 0
        assert t.constraints["never_pruned"] == 1.0  # infeasible for Optuna's samplers and its front
    for t in pruned:
        assert t.user_attrs["never_pruned"] is False and t.constraints["never_pruned"] == 0.0
    base = next(t for t in trials if t.user_attrs.get("baseline"))
    assert "never_pruned" not in base.user_attrs and "never_pruned" not in base.constraints
    front = {t.number for t in never_study["study"].best_trials}
    assert front and not front & {t.number for t in never}
    client = MlflowClient(tracking_uri=tracking_uri(never_study["runs"]))
    for t in never + pruned:
        tag = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["adprune.never_pruned"]
        assert tag == ("true" if t in never else "false")


def test_the_study_line_and_the_report_say_never_pruned(never_study):
    report = build_report(load_study_data(never_study["runs"], "never"))
    never = {t.number for t in never_study["trials"] if t.user_attrs.get("never_pruned")}
    rows = {r["number"]: r for r in report.rows}
    assert {n for n, r in rows.items() if r["never_pruned"]} == never
    assert not never & set(report.pareto) and report.never_pruned == len(never)
    html, md = render_html(report), render_markdown(report)
    assert f"COMPLETE but never pruned (of the above; the baseline's network again)</td><td>{len(never)}" in html
    for n in never:
        assert f">{n} (never pruned)</a>" in html or f">{n} (never pruned)<" in html
    assert "COMPLETE but never pruned" in md
    # the baseline's marker is labelled with its own number only, never-pruned twins are named on hover
    for view in report.views:
        from reports.figures import _texts

        labels = set(_texts(view).values())
        assert str(report.baseline) in labels or not any(p.baseline for p in view.points)
        assert not any(str(n) in label.split(",") for label in labels for n in never)
    # the command's own line for each such trial
    for n in never:
        # "trial n COMPLETE: ..." or, forked from a snapshot, "trial n (reused epochs 1-2: ...) COMPLETE: ..."
        line = next(li for li in never_study["out"].splitlines()
                    if re.match(rf"trial {n} (\(reused epochs [^)]*\) )?COMPLETE: ", li))
        assert "never pruned (no cut happened: the dense baseline's network again, kept off the front)" in line
