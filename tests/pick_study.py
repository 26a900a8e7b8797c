"""One real tiny study shared by the pick and control tests (built once per test session).

Real SQLite Optuna storage and MLflow store in pytest's session temp folder: the dense baseline and three
pruned trials of a narrow VGG-11 on synthetic data (about 10 s on 2 CPU cores), plus two hand-made trials
added to the storage the way Optuna records them: a FAIL trial, and a COMPLETE trial dominated by a real
pruned Pareto trial (sharing its network and run), to pick off the front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from adprune.cli import main
from study.runner import run_study
from study.space import load_study_config
from tests.helpers import TINY, optuna_uri

NAME = "tiny"


@dataclass(frozen=True)
class TinyStudy:
    runs: Path
    pruned: int  # a COMPLETE, pruned trial on the Pareto front
    failed: int  # a FAIL trial
    dominated: int  # a COMPLETE trial off the front


def build(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """The shared study; built on the first call of the session, reused after."""
    root = tmp_path_factory.getbasetemp() / "pick-study"
    runs = root / "runs"
    if not (root / "done").is_file():
        root.mkdir(parents=True, exist_ok=True)
        config = root / "tiny.yaml"
        config.write_text(yaml.safe_dump(TINY, sort_keys=False))
        run_study(load_study_config(config), NAME, 4, runs, progress=False, log=lambda _line: None)
        _add_hand_made_trials(runs)
        (root / "done").write_text("ok")
    study = optuna.load_study(study_name=NAME, storage=optuna_uri(runs))
    trials = study.get_trials()
    front = {t.number for t in study.best_trials}
    pruned = [t.number for t in trials if t.number in front and t.state == TrialState.COMPLETE
              and not t.user_attrs.get("baseline") and t.user_attrs["final"]["prune_rounds"] > 0]
    assert pruned, "the tiny study has no pruned Pareto trial; change TINY's seed"
    failed = next(t.number for t in trials if t.state == TrialState.FAIL)
    dominated = next(t.number for t in trials if t.user_attrs.get("hand_made_dominated"))
    return TinyStudy(runs, pruned[0], failed, dominated)


def _add_hand_made_trials(runs: Path) -> None:
    study = optuna.load_study(study_name=NAME, storage=optuna_uri(runs))
    front = [t for t in study.best_trials if not t.user_attrs.get("baseline") and t.user_attrs["final"]["prune_rounds"]]
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "diverged at epoch 1 (training loss not finite)"}))
    if front:
        src = front[0]
        val, flops, cum = src.values
        attrs = {k: src.user_attrs[k] for k in ("config", "out_dir", "mlflow_run_id", "final", "epochs")}
        study.add_trial(optuna.trial.create_trial(values=[val - 0.01, flops * 1.1, cum * 1.1],
                                                  user_attrs={**attrs, "hand_made_dominated": True}))


def adprune(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """``adprune ARGV``: the front door's command line, run in this process."""
    return main(list(argv))
