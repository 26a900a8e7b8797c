"""``adprune pick`` on a real tiny study: registry, export folder, reloading, ONNX, --knee, bad input."""

import json
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from adprune_core.config import config_from_dict, config_to_dict
from adprune_core.data import DeviceLoader, load_dataset
from adprune_core.export import load_model
from adprune_core.trainer import evaluate
from followup.onnx_export import fixed_input
from followup.pick import pick_metrics, readme_text, registered_model_name
from tests.helpers import optuna_uri, tracking_uri
from tests.pick_study import NAME, adprune, build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory)


def trial(runs: Path, number: int) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=NAME, storage=optuna_uri(runs)).trials[number]


def outputs(folder, x):
    model = load_model(folder)
    with torch.no_grad():
        return model(x)


def test_pick_registers_a_version_and_exports_a_folder_that_reloads_identically(tiny, tmp_path, capsys,
                                                                                 monkeypatch):
    n, runs, out = tiny.pruned, tiny.runs, tmp_path / "pick"
    assert adprune(monkeypatch, "pick", "--runs-dir", str(runs), "--study", NAME, "--trial", str(n),
                   "--out", str(out)) == 0
    printed = capsys.readouterr()
    assert f"picked trial {n} of study 'tiny'" in printed.out and "identical outputs" in printed.out
    assert "warning" not in printed.err  # a Pareto trial

    t = trial(runs, n)
    # the registry: a model per study, a version whose source holds the network, an alias per pick
    client = MlflowClient(tracking_uri=tracking_uri(runs), registry_uri=tracking_uri(runs))
    name = registered_model_name(NAME)
    assert name == "adprune-tiny" and client.get_registered_model(name).name == name
    version = client.get_model_version_by_alias(name, f"trial-{n}")
    assert version.run_id == t.user_attrs["mlflow_run_id"]
    source = Path(urlparse(version.source).path)
    assert (source / "model.json").is_file() and (source / "model.safetensors").is_file()
    assert client.get_run(version.run_id).data.tags["adprune.pick"] == f"{name}/{version.version}"

    # the folder reloads with identical outputs to the trial's own network, through adprune_core and MLflow
    x = fixed_input((3, 32, 32), batch=5, seed=3)
    want = outputs(Path(t.user_attrs["out_dir"]) / "model", x)
    assert torch.equal(outputs(out, x), want)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(runs))
    local = mlflow.artifacts.download_artifacts(f"models:/{name}@trial-{n}", dst_path=str(tmp_path / "dl"))
    assert torch.equal(outputs(local, x), want)
    # ... and it is the trained network: its validation accuracy is the trial's
    cfg = config_from_dict(t.user_attrs["config"])
    data = load_dataset(cfg.data)
    val = DeviceLoader(data.val_images, data.val_labels, batch_size=64, device="cpu", mean=data.mean, std=data.std,
                       train=False)
    assert evaluate(load_model(out), val) == t.user_attrs["final"]["val_top1"]

    # the files beside it
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "config.yaml", "metrics.json",
                                                "README.md", "model.onnx"}
    assert config_to_dict(config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))) == t.user_attrs["config"]
    metrics = json.loads((out / "metrics.json").read_text())
    base = trial(runs, 0)
    assert base.user_attrs["baseline"] and metrics["baseline"]["trial"] == 0
    final, base_final = t.user_attrs["final"], base.user_attrs["final"]
    assert metrics["val_top1"] == t.values[0] == final["val_top1"]
    assert metrics["compression_flops"] == t.user_attrs["compression_flops"] > 1
    assert metrics["accuracy_change"] == pytest.approx(final["val_top1"] - base_final["val_top1"])
    assert metrics["train_compute_reduction"] == pytest.approx(base_final["train_flops_cum"] / final["train_flops_cum"])
    assert metrics["on_pareto_front"] is True and metrics["checks"] == {"export_identical": True,
                                                                       "mlflow_identical": True}
    assert metrics["registry"]["version"] == int(version.version) and metrics["input"]["mean"] == list(data.mean)
    readme = (out / "README.md").read_text()
    assert f'load_model("{out.resolve()}")' in readme and f"models:/{name}@trial-{n}" in readme
    assert "onnxruntime" in readme and "mean [" in readme

    # ONNX: same logits within 1e-4, any batch size (onnxruntime is optional: without it, only the file)
    try:
        import onnxruntime as ort
    except ImportError:
        assert metrics["onnx"]["matches_torch"] is None and "not installed" in metrics["onnx"]["note"]
        return
    assert metrics["onnx"]["matches_torch"] is True
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=0)


def test_knee_picks_a_pareto_trial_says_why_and_adds_a_version(tiny, tmp_path, capsys, monkeypatch):
    client = MlflowClient(tracking_uri=tracking_uri(tiny.runs), registry_uri=tracking_uri(tiny.runs))
    before = len(client.search_model_versions("name='adprune-tiny'")) if client.search_registered_models() else 0
    # no --study: the store holds one study
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tiny.runs), "--knee", "--out", str(tmp_path / "k")) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "k" / "metrics.json").read_text())
    n = metrics["trial"]
    pareto = {t.number for t in optuna.load_study(study_name=NAME, storage=optuna_uri(tiny.runs)).best_trials}
    assert n in pareto and metrics["on_pareto_front"] is True
    assert f"picked trial {n}" in out and "why: " in out
    assert metrics["knee_reason"] and metrics["knee_reason"] in out
    versions = client.search_model_versions("name='adprune-tiny'")
    assert len(versions) == before + 1  # one version per pick
    newest = max(versions, key=lambda v: int(v.version))
    assert client.get_model_version_by_alias("adprune-tiny", f"trial-{n}").version == newest.version


def test_a_trial_off_the_front_is_picked_with_a_warning(tiny, tmp_path, capsys, monkeypatch):
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tiny.runs), "--trial", str(tiny.dominated),
                   "--out", str(tmp_path / "d")) == 0
    err = capsys.readouterr().err
    assert f"warning: trial {tiny.dominated} is not on the Pareto front" in err
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["on_pareto_front"] is False


def test_a_pick_without_onnx_is_written_anyway_and_says_why(tiny, tmp_path, capsys, monkeypatch):
    import followup.pick

    monkeypatch.setattr(followup.pick, "export_onnx", lambda *a: {"file": None, "error": "ConversionError: no op"})
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tiny.runs), "--trial", str(tiny.pruned),
                   "--out", str(tmp_path / "p")) == 0
    assert "warning: no ONNX export (ConversionError: no op)" in capsys.readouterr().err
    files = {p.name for p in (tmp_path / "p").iterdir()}
    assert files == {"model.safetensors", "model.json", "config.yaml", "metrics.json", "README.md"}
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["onnx"]["error"] == "ConversionError: no op"
    assert "No ONNX file: the export failed (ConversionError: no op)" in (tmp_path / "p" / "README.md").read_text()


def test_pick_metrics_without_a_baseline():
    final = {"val_top1": 0.5, "params": 10, "flops": 20, "train_flops_cum": 30, "compression_flops": 2.0}
    m = pick_metrics(final, None)
    assert m["baseline"] is None and m["accuracy_change"] is None and m["train_compute_reduction"] is None
    m = pick_metrics(final, {"val_top1": 0.75, "train_flops_cum": 90}, 0)
    assert m["accuracy_change"] == -0.25 and m["train_compute_reduction"] == 3.0 and m["baseline"]["trial"] == 0


def test_the_readme_without_a_baseline_compares_with_the_dense_network(tmp_path):
    final = {"val_top1": 0.5, "params": 10, "flops": 20, "train_flops_cum": 30, "params_dense": 40, "flops_dense": 80,
             "compression_params": 4.0, "compression_flops": 4.0, "prune_rounds": 1, "epochs_run": 3}
    record = {**pick_metrics(final, None), "study": "s", "trial": 3, "num_classes": 10,
              "registry": {"name": "adprune-s", "version": 1, "alias": "trial-3", "uri": "models:/adprune-s@trial-3",
                           "tracking_uri": "sqlite:////x/mlflow.db"},
              "input": {"image_shape": [3, 32, 32], "mean": None, "note": "no data"},
              "onnx": {"file": None, "error": "ConversionError: no op"}}
    text = readme_text(record, {"model": {"name": "vgg11", "width_mult": 0.5}, "prune": {"schedule": "fixed"}},
                       tmp_path)
    assert "| | this network | dense (no completed baseline) |" in text
    assert "| params | 10 (4.00x fewer) | 40 |" in text and "unknown here: no data" in text
    assert 'mlflow.set_tracking_uri("sqlite:////x/mlflow.db")' in text and "No ONNX file" in text


@pytest.mark.parametrize(("argv", "needle", "fix"), [
    (["--study", "nope", "--trial", "1"], "unknown study 'nope' in ", "known: tiny"),
    (["--trial", "99"], "trial 99 is not in study 'tiny' (trials: 0..", "pick one of its Pareto trials: PARETO"),
    (["--trial", "-1"], "trial -1 is not in study 'tiny'", "pick one of its Pareto trials: PARETO"),
    (["--trial", "FAILED"], "is FAIL (diverged at epoch 1 (training loss not finite)); only COMPLETE trials",
     "pick one of the Pareto trials: PARETO"),
    (["--trial", "1", "--knee"], "give exactly one of --trial N and --knee",
     "the Pareto trials of study 'tiny': PARETO"),
    ([], "give exactly one of --trial N and --knee", "make pick TRIAL=n or KNEE=1"),
])
def test_bad_picks_are_one_line_errors(tiny, tmp_path, capsys, monkeypatch, argv, needle, fix):
    argv = [str(tiny.failed) if a == "FAILED" else a for a in argv]
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tiny.runs), *argv, "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: ") and len(err.splitlines()) == 1
    pareto = sorted(t.number for t in optuna.load_study(study_name=NAME, storage=optuna_uri(tiny.runs)).best_trials)
    assert needle in err and fix.replace("PARETO", ", ".join(map(str, pareto))) in err
    assert not (tmp_path / "x").exists()


def test_store_and_study_errors(tmp_path, capsys, monkeypatch):
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tmp_path / "empty"), "--trial", "1") == 2
    assert "no Optuna storage at " in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()  # looking did not create a store
    for name in ("b", "a"):
        optuna.create_study(storage=optuna_uri(tmp_path), study_name=name)
    assert adprune(monkeypatch, "pick", "--runs-dir", str(tmp_path), "--knee") == 2
    err = capsys.readouterr().err.strip()
    assert "holds 2 studies (a, b); name one with --study" in err and len(err.splitlines()) == 1


def _versions(runs: Path) -> list[tuple[str, str]]:
    client = MlflowClient(tracking_uri=tracking_uri(runs), registry_uri=tracking_uri(runs))
    if not client.search_registered_models():
        return []
    return sorted((v.version, v.source) for v in client.search_model_versions("name='adprune-tiny'"))


def _alias(runs: Path, n: int) -> str | None:
    client = MlflowClient(tracking_uri=tracking_uri(runs), registry_uri=tracking_uri(runs))
    try:
        return client.get_model_version_by_alias("adprune-tiny", f"trial-{n}").version
    except Exception:
        return None


def _first_group(arch: dict) -> str:
    return next(iter(arch["group_widths"]))


@pytest.mark.parametrize(("tamper", "needle"), [
    (lambda a: a["group_widths"].update({_first_group(a): 10_000}), "is wider than the layer's"),
    (lambda a: a["group_widths"].update({_first_group(a): a["group_widths"][_first_group(a)] - 1}),
     "does not load into the network model.json describes"),
    (lambda a: a["group_widths"].update({"features.999": 4}), "names 'features.999', which is not a prunable layer"),
    (lambda a: a["group_widths"].update({"../../etc/passwd": 4}), "'../../etc/passwd' is not a layer name"),
    (lambda a: a.update(num_classes=10 ** 12), "num_classes 1000000000000 must be a whole number from 1 to 100000"),
    (lambda a: a["group_widths"].update({_first_group(a): 10 ** 15}), "is wider than the layer's"),
    (lambda a: a["model"].update(width_mult=1000.0), "model width_mult is 1000.0, but trial"),
])
def test_a_tampered_model_json_is_one_line_and_registers_and_exports_nothing(tiny, tmp_path, capsys, monkeypatch,
                                                                             tamper, needle):
    n, runs = tiny.pruned, tiny.runs
    path = Path(trial(runs, n).user_attrs["out_dir"]) / "model" / "model.json"
    original = path.read_text()
    versions, alias = _versions(runs), _alias(runs, n)
    arch = json.loads(original)
    tamper(arch)
    path.write_text(json.dumps(arch))
    try:
        assert adprune(monkeypatch, "pick", "--runs-dir", str(runs), "--trial", str(n),
                       "--out", str(tmp_path / "out" / "pick")) == 2
    finally:
        path.write_text(original)
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: ") and len(err.splitlines()) == 1 and needle in err
    assert _versions(runs) == versions and _alias(runs, n) == alias  # nothing registered, the alias where it was
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no folder, no leftovers


def test_a_pick_whose_registry_copy_fails_its_check_is_rolled_back(tiny, tmp_path, capsys, monkeypatch):
    """The registry's copy of the network (the trial run's model/ artifact) is damaged: the version made for it
    is deleted, the alias points where it did, and the export folder holds the earlier pick, as it was."""
    n, runs, out = tiny.pruned, tiny.runs, tmp_path / "pick"
    assert adprune(monkeypatch, "pick", "--runs-dir", str(runs), "--trial", str(n), "--out", str(out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    versions, alias = _versions(runs), _alias(runs, n)
    client = MlflowClient(tracking_uri=tracking_uri(runs))
    artifact = Path(urlparse(client.get_run(trial(runs, n).user_attrs["mlflow_run_id"]).info.artifact_uri).path)
    weights = artifact / "model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-64])  # truncated
    try:
        assert adprune(monkeypatch, "pick", "--runs-dir", str(runs), "--trial", str(n), "--out", str(out)) == 2
    finally:
        weights.write_bytes(original)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err and "does not load" in err
    assert _versions(runs) == versions and _alias(runs, n) == alias
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pick"]  # no temporary or set-aside folder left
