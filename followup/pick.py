"""Picking: register one trial's pruned network in the MLflow model registry and export it to a folder.

A pick of COMPLETE trial n of study S (``adprune pick``):

- **Registry.** In the study's MLflow store (``sqlite:///<runs>/mlflow.db``), the registered model
  ``adprune-<S>`` (sanitised: characters other than letters, digits, ``_ . -`` become ``-``) gets a new
  version per pick, and the alias ``trial-<n>`` points at the newest pick of trial n. The version's
  source is the trial run's ``model/`` artifact (``model.safetensors`` + ``model.json``): pickle-free, so
  no MLflow flavour (``mlflow.pytorch`` pickles the module); ``models:/adprune-S@trial-n`` downloads that
  folder and ``adprune_core.export.load_model`` rebuilds it. The trial run is tagged ``adprune.pick``.
- **Folder** (default ``<runs>/picks/<S>/trial-<n>/``): ``model.safetensors`` and ``model.json`` (copied
  from the trial's trainer output, as ``adprune_core.export`` wrote them), ``config.yaml`` (the resolved
  trainer config), ``metrics.json`` (``pick_metrics``, the registry entry, the ONNX outcome, the checks),
  ``model.onnx`` where the export works, and ``README.md`` on loading it.
- **Checks**, recorded in ``metrics.json``: the exported folder and the ``models:/`` URI both rebuild a
  network whose outputs on a fixed input equal (``torch.equal``) those of the trial's own saved network.
- **All or nothing.** The trial's network must load first (a changed or damaged ``model.json``: wrong
  widths, unknown or path-like group names, huge numbers, another model, is a one-line error); the
  export is written and checked in a temporary folder, then renamed into place; the registry version is
  made last and checked. A step that fails undoes the others: no version, the alias where it was, the
  folder as it was (``pick``).

``--knee`` chooses the trial with ``reports.knee.find_knee`` over the study's Pareto trials.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from optuna.trial import FrozenTrial

from adprune_core.config import config_from_dict
from adprune_core.errors import ADPruneError
from adprune_core.export import ARCH_FILE, WEIGHTS_FILE, load_model, read_architecture
from adprune_core.files import atomic_write
from adprune_core.records import FinalMetrics, Savings
from followup.onnx_export import ONNX_FILE, export_onnx, fixed_input
from followup.registry import Registration, download_registered, mlflow_client, register, unregister
from reports.knee import FrontPoint, Knee, find_knee
from reports.load import MODEL_PREFIX, pick_alias, registered_model_name
from reports.study_view import StudyView
from reports.trial_lookup import completed_trial, pareto_note, trial_model_dir
from study.stores import redact
from study.trial_record import TrialRecord

CONFIG_FILE, METRICS_FILE, README_FILE = "config.yaml", "metrics.json", "README.md"


@dataclass
class PickResult:
    """What a pick did, for the command's printout and the tests."""

    study: str
    number: int
    out_dir: Path
    model_name: str
    version: str
    alias: str
    source: str
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None  # why --knee chose this trial


def default_out_dir(runs_dir: str | Path, study: str, number: int) -> Path:
    return Path(runs_dir) / "picks" / registered_model_name(study)[len(MODEL_PREFIX):] / f"trial-{number}"


# --- choosing ------------------------------------------------------------------------------------

def knee_choice(view: StudyView, pruned_only: bool = False) -> tuple[FrozenTrial, Knee]:
    """The knee of the study's Pareto trials on val_top1 vs compression of the size it minimises; with
    ``pruned_only``, of those that pruned (the controls' knee: the baseline has nothing to control)."""
    records = {t.number: TrialRecord.from_trial(t) for t in view.pareto}
    front = [t for t in view.pareto if not pruned_only or (not records[t.number].baseline
                                                           and records[t.number].pruned)]
    if not front:
        raise ADPruneError(f"study {view.name!r} has no COMPLETE feasible trial, so no Pareto front to find a knee "
                           "on; run more trials (make study) or pick one with --trial")
    key = f"compression_{view.size_objective}"
    points = [FrontPoint(t.number, float(_final(records[t.number]).val_top1),
                         float(getattr(_final(records[t.number]), key))) for t in front]
    knee = find_knee(points, key)
    return next(t for t in front if t.number == knee.number), knee


def choose_trial(view: StudyView, number: int | None, knee: bool) -> tuple[FrozenTrial, str | None]:
    """Exactly one of ``number`` / ``knee``: the trial to pick and, for the knee, why."""
    if (number is None) == (not knee):
        raise ADPruneError("give exactly one of --trial N and --knee (make pick TRIAL=n or KNEE=1); "
                           f"the Pareto trials of study {view.name!r}: {view.pareto_numbers()}")
    if knee:
        trial, found = knee_choice(view)
        return trial, found.reason
    return completed_trial(view, int(number)), None


# --- what the pick records -----------------------------------------------------------------------

def _final(record: TrialRecord) -> FinalMetrics:
    if record.final is None:
        raise ADPruneError("a COMPLETE trial without final metrics (user attr 'final'): the study was not written "
                           "by adprune study; pick another trial")
    return record.final


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def pick_metrics(final: FinalMetrics | Mapping[str, Any], baseline_final: FinalMetrics | Mapping[str, Any] | None,
                 baseline_number: int | None = None) -> dict[str, Any]:
    """The pick's numbers from the trial's and the baseline's final metrics (pure; ``Savings.of``).

    ``accuracy_change`` = val_top1 - baseline val_top1 (a fraction; negative = less accurate), and
    ``test_accuracy_change`` likewise for ``test_top1`` (the evaluation split the search never read; None
    when either run lacks it);
    ``train_compute_reduction`` = baseline train_flops_cum / train_flops_cum (x; > 1 = cheaper);
    ``compression_params`` / ``compression_flops`` = dense / final (x), from the trainer. Without a
    baseline the two baseline figures are None."""
    keys = ("val_top1", "test_top1", "params", "flops", "train_flops_cum", "params_dense", "flops_dense",
            "compression_params", "compression_flops", "prune_rounds", "epochs_run")
    mine = final.to_dict() if isinstance(final, FinalMetrics) else final
    out: dict[str, Any] = {k: mine.get(k) for k in keys}
    if baseline_final is None:
        out.update(baseline=None, accuracy_change=None, test_accuracy_change=None, train_compute_reduction=None)
        return out
    base = baseline_final.to_dict() if isinstance(baseline_final, FinalMetrics) else baseline_final
    out["baseline"] = {"trial": baseline_number, **{k: base.get(k) for k in
                                                     ("val_top1", "test_top1", "params", "flops", "train_flops_cum")}}
    saved = Savings.of(mine, base)
    out["accuracy_change"] = _or_none(saved.accuracy_change)
    out["test_accuracy_change"] = _or_none(saved.test_accuracy_change)
    out["train_compute_reduction"] = _or_none(saved.train_compute_reduction)
    return out


def fewer(compression: float, prune_rounds: int | None) -> str:
    """``"4.20x fewer"``, or ``"dense: never pruned"`` for a network that made no cut (1.00x says nothing)."""
    return f"{compression:.2f}x fewer" if prune_rounds else "dense: never pruned"


def input_description(config: Mapping[str, Any], image_shape: list[int]) -> dict[str, Any]:
    """How to feed the network: shape and normalisation, read from the dataset (never downloaded).

    Best effort: when the dataset cannot be opened here, mean and std are None and ``note`` says why."""
    desc: dict[str, Any] = {"layout": "float32 [N, C, H, W]", "image_shape": list(image_shape),
                            "scale": "pixels / 255", "mean": None, "std": None}
    try:
        from adprune_core.data import load_dataset

        raw = {k: dict(v) for k, v in config.items()}
        raw["data"]["download"] = False
        data = load_dataset(config_from_dict(raw).data)
        desc.update(mean=list(data.mean), std=list(data.std), classes=list(data.classes))
    except (ADPruneError, OSError) as exc:
        desc["note"] = f"dataset not available here, normalisation unknown ({exc})"
    return desc


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s outputs on ``x``, without autograd. Load the model outside ``no_grad``: rebuilding it
    (``load_model``) traces with autograd."""
    with torch.no_grad():
        return model(x)


# --- the pick ------------------------------------------------------------------------------------

def pick(view: StudyView, trial: FrozenTrial, out_dir: str | Path | None = None,
         reason: str | None = None) -> PickResult:
    """Register and export COMPLETE ``trial`` of ``view`` (see the module docstring); returns what it did.

    All or nothing: the trial's network is loaded and checked first (a damaged or changed ``model.json``
    is a one-line ``ADPruneError``), the export is written into a temporary folder beside ``out`` and
    checked, then put in place (an earlier pick of the same folder is kept aside until the end), then the
    registry version is made and checked. When any step fails, the registry version is deleted, the alias
    points where it did, and the folder is as it was."""
    out = Path(out_dir) if out_dir is not None else default_out_dir(view.runs_dir, view.name, trial.number)
    off_front = pareto_note(view, trial)
    notes = [off_front] if off_front else []
    client = mlflow_client(view.stores)
    record = TrialRecord.from_trial(trial)
    if record.config is None:
        raise ADPruneError(f"trial {trial.number} has no recorded trainer config (user attr 'config'); pick a "
                           "COMPLETE trial of a study run by adprune study")
    config = dict(record.config)
    with tempfile.TemporaryDirectory() as tmp:
        source_dir = trial_model_dir(trial, client, Path(tmp) / "trial")
        arch = _checked_architecture(source_dir, trial, config)
        x = fixed_input(tuple(arch["image_shape"]))
        want = outputs(load_model(source_dir), x)  # the trial's own network: it must load before anything else
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        backup: Path | None = None
        swapped = False
        registration: Registration | None = None
        alias = pick_alias(trial.number)
        try:
            for name in (WEIGHTS_FILE, ARCH_FILE):
                shutil.copyfile(source_dir / name, staging / name)
            (staging / CONFIG_FILE).write_text(f"# resolved trainer config of trial {trial.number} of study "
                                               f"{view.name!r}\n" + yaml.safe_dump(config, sort_keys=False))
            exported = load_model(staging)
            checks = {"export_identical": torch.equal(want, outputs(exported, x))}
            if not checks["export_identical"]:
                raise ADPruneError(f"the export of trial {trial.number} gives other outputs than the trial's own "
                                   f"network ({source_dir}); nothing was registered (please report this)")
            onnx = export_onnx(exported, staging / ONNX_FILE, tuple(arch["image_shape"]))
            backup = _swap_in(staging, out)
            swapped = True
            baseline = view.baseline
            metrics = pick_metrics(_final(record), _final(TrialRecord.from_trial(baseline)) if baseline else None,
                                   baseline.number if baseline else None)
            registration = register(client, registered_model_name(view.name), trial, view.name, out, metrics)
            registry = load_model(download_registered(view.stores, registration.name, alias, Path(tmp) / "registry"))
            checks["mlflow_identical"] = torch.equal(want, outputs(registry, x))
            if not checks["mlflow_identical"]:
                raise ADPruneError(f"the registry's copy of trial {trial.number} ({registration.source}) gives other "
                                   "outputs than the trial's own network; its version was removed again")
            record = {"study": view.name, "trial": trial.number,
                      "baseline_trial": record.baseline,
                      "objectives": dict(zip(view.objective_names, trial.values)), "on_pareto_front": off_front is None,
                      **metrics, "params_searched": dict(trial.params),
                      "input": input_description(config, arch["image_shape"]), "num_classes": arch["num_classes"],
                      "registry": {"tracking_uri": redact(view.stores.tracking_uri), "name": registration.name,
                                   "version": registration.version.version, "alias": alias,
                                   "uri": f"models:/{registration.name}@{alias}", "source": registration.source},
                      "mlflow_run_id": record.mlflow_run_id, "onnx": onnx, "checks": checks,
                      "knee_reason": reason}
            atomic_write(out / METRICS_FILE, lambda path: path.write_text(json.dumps(record, indent=2, default=float)))
            atomic_write(out / README_FILE, lambda path: path.write_text(readme_text(record, config, out)))
            if registration.run_id:
                client.set_tag(registration.run_id, "adprune.pick",
                               f"{registration.name}/{registration.version.version}")
        except BaseException:
            if registration is not None:
                unregister(client, registration, alias)
            if swapped:
                _swap_back(out, backup)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    if onnx.get("error"):
        notes.append(f"no ONNX export ({onnx['error']}); the pick has the safetensors network only")
    elif onnx.get("matches_torch") is False:
        notes.append(f"ONNX outputs differ from PyTorch's: {onnx['note']}")
    return PickResult(view.name, trial.number, out, registration.name, str(registration.version.version), alias,
                      registration.source, record, notes, reason)


def _checked_architecture(source_dir: Path, trial: FrozenTrial, config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial network's ``model.json``, checked (``adprune_core.export.read_architecture``) and matched
    with the trial's own config: a file changed after training is a one-line ``ADPruneError``."""
    arch = read_architecture(source_dir)
    trained = {k: list(v) if isinstance(v, tuple) else v for k, v in config["model"].items()}
    if arch["model"] != trained:
        changed = sorted(k for k in arch["model"].keys() | trained.keys() if arch["model"].get(k) != trained.get(k))
        raise ADPruneError(f"{str(source_dir / ARCH_FILE)!r}: model {changed[0]} is {arch['model'].get(changed[0])!r}, "
                           f"but trial {trial.number} trained {trained.get(changed[0])!r}; the file was changed or "
                           "damaged: nothing was registered or exported")
    return arch


def _swap_in(staging: Path, out: Path) -> Path | None:
    """Rename the finished export ``staging`` to ``out`` (same folder: one rename). An existing ``out`` (an
    earlier pick) is renamed aside first and its new name returned, for ``_swap_back``; None if there was none."""
    backup = None
    if out.exists():
        if not out.is_dir():
            raise ADPruneError(f"--out: {out} is a file, not a folder; give a folder for the export")
        backup = out.with_name(f".{out.name}.previous-{os.getpid()}")
        os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)
        raise
    return backup


def _swap_back(out: Path, backup: Path | None) -> None:
    """Undo ``_swap_in``: remove the new ``out`` and put the earlier one (if any) back."""
    shutil.rmtree(out, ignore_errors=True)
    if backup is not None and backup.exists():
        os.replace(backup, out)


def _acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "(not recorded)"


def readme_text(record: Mapping[str, Any], config: Mapping[str, Any], out: Path) -> str:
    """The pick's README: what the network is, how it compares with the dense baseline, three ways to load it."""
    model, prune, reg, inp = config["model"], config["prune"], record["registry"], record["input"]
    shape = ", ".join(map(str, inp["image_shape"]))
    base = record.get("baseline")
    if base:
        head = f"dense baseline (trial {base['trial']})"
        cells = [f"{base['val_top1']:.4f}", f"{base['params']:,}", f"{base['flops']:,}",
                 f"{base['train_flops_cum']:.4g}", _acc(base.get("test_top1"))]
        change = [f" ({record['accuracy_change']:+.4f})", f" ({record['train_compute_reduction']:.2f}x less)",
                  f" ({record['test_accuracy_change']:+.4f})" if record.get("test_accuracy_change") is not None
                  else ""]
    else:
        head = "dense (no completed baseline)"
        cells = ["", f"{record['params_dense']:,}", f"{record['flops_dense']:,}", "", ""]
        change = ["", "", ""]
    table = "\n".join([
        f"| | this network | {head} |", "|---|---|---|",
        f"| val_top1 (the split the search used) | {record['val_top1']:.4f}{change[0]} | {cells[0]} |",
        f"| test_top1 (never seen by the search) | {_acc(record.get('test_top1'))}{change[2]} | {cells[4]} |",
        f"| params | {record['params']:,} ({fewer(record['compression_params'], record['prune_rounds'])}) "
        f"| {cells[1]} |",
        f"| FLOPs per image | {record['flops']:,} ({fewer(record['compression_flops'], record['prune_rounds'])}) "
        f"| {cells[2]} |",
        f"| training FLOPs | {record['train_flops_cum']:.4g}{change[1]} | {cells[3]} |"])
    norm = (f"normalised per channel with mean {inp['mean']} and std {inp['std']}" if inp.get("mean") else
            f"normalised with the training set's per-channel mean and std (unknown here: {inp.get('note', '')})")
    onnx = record["onnx"]
    onnx_part = (f"`{ONNX_FILE}`: one input `images` (float32 [N, {shape}]), one output `logits`, dynamic batch. "
                 + (onnx.get("note") or "") + "\n\n```python\nimport onnxruntime as ort\n"
                 f"session = ort.InferenceSession(\"{out.resolve() / ONNX_FILE}\")\n"
                 "logits = session.run(None, {\"images\": images.numpy()})[0]\n```\n"
                 if onnx.get("file") else f"No ONNX file: the export failed ({onnx.get('error')}).\n")
    return f"""# ADPrune pick: study {record['study']!r}, trial {record['trial']}

A {model['name']} (width_mult {model['width_mult']}) trained for {record['epochs_run']} epochs with activation-density
pruning in training (prune.schedule {prune['schedule']}, {record['prune_rounds']} prune round(s)).

{table}

Files: `model.safetensors` (weights, pickle-free), `model.json` (architecture: model config, group widths,
pruning history), `config.yaml` (the resolved trainer config; `adprune train --config config.yaml` reruns the
trial), `metrics.json` (final metrics, compression, change vs the baseline, registry entry, checks).

Input: float32 images [N, {shape}], pixels / 255, {norm}.
Output: logits over {record['num_classes']} classes.

## With adprune_core

```python
from adprune_core.export import load_model
model = load_model("{out.resolve()}")  # rebuilt from safetensors + JSON, eval mode
logits = model(images)
```

## Through MLflow

Registered model `{reg['name']}`, version {reg['version']}, alias `{reg['alias']}`, in `{reg['tracking_uri']}`.
The version's source is the trial run's `model/` artifact (safetensors + JSON, no pickled module):

```python
import mlflow
from adprune_core.export import load_model
mlflow.set_tracking_uri("{reg['tracking_uri']}")  # the registry follows the tracking URI
local = mlflow.artifacts.download_artifacts("{reg['uri']}")
model = load_model(local)
```

## ONNX

{onnx_part}"""
