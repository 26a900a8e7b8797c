"""The `adprune` command as a user runs it: exit codes, one-line errors, no tracebacks."""

import json
import subprocess
import sys

import pytest

from adprune_core.config import DATA_ROOT_ENV

ADPRUNE = [sys.executable, "-m", "adprune"]


def run(*args, cwd=None):
    return subprocess.run([*ADPRUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--set", "model.name=vgg91"], "unknown model 'vgg91'"),
        (["train", "--set", "train.epochs=-1"], "train.epochs: -1 is below the minimum 1"),
        (["train", "--set", "nonsense"], "expected KEY=VALUE"),
        (["train", "--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["train", "--set", "data.name=cifar10", "--set", "data.download=false"], "put cifar-10-batches-py/"),
        (["train", "--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/folder"],
         "/nonexistent/folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, args, needle):
    # cwd is an empty folder, so the default data root ./data holds nothing
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    proc = run(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_train_writes_summary_and_model(tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--set", "data.train_size=128", "--set", "data.val_size=64", "--set", "train.epochs=2",
               "--set", "model.width_mult=0.125", "--set", "prune.schedule=fixed", "--set", "prune.epochs=[1]",
               "--set", "train.progress=false", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["prune"]["epochs"] == [1] and len(summary["prune_events"]) == 1
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "model.json").is_file()


def test_config_command_prints_resolved_yaml():
    proc = run("config", "--set", "train.epochs=7")
    assert proc.returncode == 0 and "epochs: 7" in proc.stdout


def test_core_library_never_imports_optuna_or_mlflow():
    code = ("import pkgutil, importlib, sys, adprune_core\n"
            "for m in pkgutil.walk_packages(adprune_core.__path__, 'adprune_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('optuna', 'mlflow', 'study', 'reports'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
