"""Workers join studies made from every shipped preset (``configs/study/``), as a user does it: ``make study``
with small overrides, then ``make worker`` with nothing but the study's name.

The stored study config keeps its search space in its order: a ``when`` condition names a key listed
before it (``prune.density_tol`` after ``prune.schedule``); a study stored by an older version (keys
sorted alphabetically) is joined all the same."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from adprune.cli import main
from study.space import load_study_config, study_config_from_spec
from study.trials import SPEC_ATTR
from tests.helpers import ROOT, optuna_uri, tracking_uri

PRESETS = sorted((ROOT / "configs" / "study").glob("*.yaml"))
# every preset on small synthetic data, a narrow network, 3 epochs (the fewest in which every schedule of
# every preset can prune: saturation needs two epochs of density history and a later epoch to prune in)
SMALL = ["data.name=synthetic", "data.train_size=64", "data.val_size=32", "model.width_mult=0.0625",
         "train.batch_size=32"]
VENV = Path(sys.executable).parents[1]


def make(target: str, *variables: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``make <target> VAR=value ...`` in the repository, with this test's virtual environment (not reinstalled)."""
    return subprocess.run(["make", "-C", str(ROOT), "-o", f"{VENV}/.installed", target, f"VENV={VENV}", *variables],
                          capture_output=True, text=True, timeout=timeout)


def preset_args(path: Path) -> tuple[str, str]:
    dataset, _, model = path.stem.partition("-")
    return dataset, model


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_the_stored_study_config_keeps_its_space_in_order_and_reloads(path, tmp_path):
    cfg = load_study_config(path, SMALL)
    study = optuna.create_study(study_name="s", storage=optuna_uri(tmp_path))
    study.set_user_attr(SPEC_ATTR, json.loads(cfg.spec))  # through a real Optuna storage, as run_study stores it
    stored = optuna.load_study(study_name="s", storage=optuna_uri(tmp_path)).user_attrs[SPEC_ATTR]
    again = study_config_from_spec(stored)
    assert again.space == cfg.space and again.trainer == cfg.trainer
    # a study stored by an older version: its keys sorted alphabetically, conditions after the keys they name
    old = json.loads(json.dumps(stored, sort_keys=True))
    assert list(old["space"]) != [d.key for d in cfg.space]
    assert {d.key: d for d in study_config_from_spec(old).space} == {d.key: d for d in cfg.space}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One runtime folder for every preset's study (the stores are created once), another for the workers."""
    return tmp_path_factory.mktemp("join")


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_a_worker_joins_a_study_from_every_preset(path, shared, capsys):
    """``adprune study`` (what make study runs) from the preset, then ``adprune worker`` (what make worker runs)
    from another runtime folder, sharing the stores by URL."""
    dataset, model = preset_args(path)
    runs, tmp_path = shared / "runs", shared
    sets = [arg for s in SMALL for arg in ("--set", s)]
    assert main(["study", "--dataset", dataset, "--model", model, "--runs-dir", str(runs), "--trials", "1",
                 "--epochs", "3", "--no-progress", *sets]) == 0
    stores = ["--storage", optuna_uri(runs), "--tracking", tracking_uri(runs)]
    assert main(["worker", "--study", path.stem, "--runs-dir", str(tmp_path / "elsewhere"), "--trials", "1",
                 *stores]) == 0
    assert "ran 1 trial(s)" in capsys.readouterr().out
    trials = optuna.load_study(study_name=path.stem, storage=optuna_uri(runs)).get_trials()
    assert [t.state.name in ("COMPLETE", "PRUNED") for t in trials] == [True, True]
    joined = trials[1]
    assert joined.params["prune.schedule"] in ("fixed", "saturation", "interval")
    assert ("prune.density_tol" in joined.params) == (joined.params["prune.schedule"] == "saturation")
    assert joined.user_attrs["out_dir"].startswith(str(tmp_path / "elsewhere" / "studies" / path.stem))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=() if p.stem == "synthetic-vgg11" else
                                               pytest.mark.slow) for p in PRESETS])
def test_make_worker_joins_a_study_made_by_make_study(path, tmp_path):
    """The README's commands, through make: ``make study`` from the preset, ``make worker STUDY=<name>``."""
    dataset, model = preset_args(path)
    runs = tmp_path / "runs"
    made = make("study", f"DATASET={dataset}", f"MODEL={model}", f"RUNS_DIR={runs}", "TRIALS=1", "EPOCHS=3",
                f"SET={' '.join(SMALL)}")
    assert made.returncode == 0, made.stdout + made.stderr
    joined = make("worker", f"STUDY={path.stem}", f"RUNS_DIR={runs}", "TRIALS=1")
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"joined study '{path.stem}'" in joined.stdout and "ran 1 trial(s)" in joined.stdout
    trials = optuna.load_study(study_name=path.stem, storage=optuna_uri(runs)).get_trials()
    assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
