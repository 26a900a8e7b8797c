"""A study searches on a validation split held out of the training images and never reads the test split: real
studies through ``adprune study`` on an image-folder dataset written to tmp_path, real SQLite and MLflow stores."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml
from PIL import Image

from adprune_core.config import DataConfig
from adprune_core.data import cache as data_module
from adprune_core.data import load_dataset
from study.space import STUDY_HOLDOUT, load_study_config
from tests.helpers import TINY, optuna_uri
from tests.pick_study import adprune

CLASSES = 4


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "_MEMORY", type(data_module._MEMORY)())


def write_folder(root: Path, shuffle_test_labels: bool) -> Path:
    """Synthetic images as PNG class folders (train/, test/); with ``shuffle_test_labels`` every test image is
    filed under a random class instead of its own: the same images, wrong labels."""
    d = load_dataset(DataConfig(num_classes=CLASSES, train_size=240, val_size=96, seed=5))
    test_labels = d.val_labels
    if shuffle_test_labels:
        test_labels = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(9))]
        assert (test_labels != d.val_labels).float().mean() > 0.5
    for split, images, labels in (("train", d.train_images, d.train_labels), ("test", d.val_images, test_labels)):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / f"class{int(label)}" / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return root


def study_file(tmp_path: Path, root: Path, name: str) -> Path:
    base = {**TINY["base"], "data": {"name": "imagefolder", "root": str(root)}}
    spec = {**TINY, "base": base, "stopper": {"check_at": [0.5], "margin": 0.0},
            "constraints": {"max_accuracy_drop": 0.3}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(monkeypatch, config: Path, runs: Path, trials: int, *extra: str) -> int:
    return adprune(monkeypatch, "study", "--config", str(config), "--runs-dir", str(runs), "--trials", str(trials),
                   "--name", "tiny", "--no-progress", *extra)


def test_shuffling_the_test_labels_changes_no_trial_and_no_front(tmp_path, monkeypatch, capsys):
    studies = {}
    for shuffled in (False, True):
        root = write_folder(tmp_path / f"data-{shuffled}", shuffled)
        runs = tmp_path / f"runs-{shuffled}"
        assert run(monkeypatch, study_file(tmp_path, root, f"s{shuffled}"), runs, 4, "--epochs", "2") == 0
        studies[shuffled] = optuna.load_study(study_name="tiny", storage=optuna_uri(runs))
    plain, shuffled = (sorted(studies[k].get_trials(), key=lambda t: t.number) for k in (False, True))
    assert len(plain) == len(shuffled) == 4
    for a, b in zip(plain, shuffled, strict=True):
        assert (a.state, a.params, a.values) == (b.state, b.params, b.values), a.number
        assert a.user_attrs.get("records") == b.user_attrs.get("records")
        assert a.user_attrs["config"]["data"]["holdout"] == STUDY_HOLDOUT  # the study's default
    assert [t.number for t in studies[False].best_trials] == [t.number for t in studies[True].best_trials]
    # ... while test_top1, measured on those test images at the end of each run, did change
    tests = [(a.user_attrs["final"]["test_top1"], b.user_attrs["final"]["test_top1"])
             for a, b in zip(plain, shuffled, strict=True) if a.user_attrs.get("final", {}).get("test_top1")]
    assert tests and any(x != y for x, y in tests)
    final = plain[0].user_attrs["final"]
    assert final["val_top1"] != final["test_top1"]  # two splits: the held-out one and the test one


def test_a_study_defaults_to_a_held_out_split_and_refuses_none(tmp_path, monkeypatch, capsys):
    config = study_file(tmp_path, write_folder(tmp_path / "data", False), "s")
    assert load_study_config(config).trainer.data.holdout == STUDY_HOLDOUT
    assert load_study_config(config, ["data.holdout=0.2"]).trainer.data.holdout == 0.2
    assert run(monkeypatch, config, tmp_path / "runs", 1, "--set", "data.holdout=0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.holdout: 0 would score every trial on the dataset's evaluation" in err
    assert not (tmp_path / "runs" / "optuna.db").exists()  # refused before anything was written


def test_resuming_a_study_on_another_split_is_refused(tmp_path, monkeypatch, capsys):
    config = study_file(tmp_path, write_folder(tmp_path / "data", False), "s")
    runs = tmp_path / "runs"
    assert run(monkeypatch, config, runs, 1, "--epochs", "2") == 0
    capsys.readouterr()
    assert run(monkeypatch, config, runs, 2, "--epochs", "2", "--set", "data.holdout=0.2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "scored its trials on another validation split (data.holdout 0.1 -> 0.2)" in err
    trials = optuna.load_study(study_name="tiny", storage=optuna_uri(runs)).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE"  # nothing recorded was lost or added
