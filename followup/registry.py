"""A pick's entry in the MLflow model registry: make it, undo it, download it.

- ``register`` makes a new version of the study's registered model for one trial (source: the trial
  run's pickle-free ``model/`` artifact, or the export folder when the run is gone) and points the alias
  ``trial-<n>`` at it; it returns a ``Registration``, which ``unregister`` undoes exactly (the version
  deleted, the alias back where it was, the registered model dropped if the pick made it).
- ``download_registered`` fetches the folder behind ``models:/<name>@<alias>``.
- ``mlflow_client`` opens the study's tracking store (one line when there is none).

``followup.pick`` calls these in its all-or-nothing order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from adprune_core.errors import ADPruneError
from adprune_core.export import ARCH_FILE
from reports.load import pick_alias
from study.stores import Stores, sqlite_path
from study.tracking import mlflow_client as study_mlflow_client
from study.trial_record import TrialRecord

# --- the registry --------------------------------------------------------------------------------

def mlflow_client(where: Stores | str | Path) -> Any:
    """An MlflowClient on the study's tracking store, tracking and registry alike."""
    stores = Stores.of(where)
    path = sqlite_path(stores.tracking_uri)
    if path is not None and not path.is_file():
        raise ADPruneError(f"no MLflow store at {path}; run a study first (make study), or pass its folder with "
                           "--runs-dir or its URL with --tracking")
    return study_mlflow_client(stores)


@dataclass
class Registration:
    """A registry entry made by a pick, and what it replaced: enough to undo it (``unregister``)."""

    name: str
    version: Any
    source: str
    run_id: str | None
    created_model: bool  # the registered model itself was made by this pick
    previous_alias_version: str | None  # where the alias pointed before


def register(client: Any, name: str, trial: FrozenTrial, study: str, out_dir: Path,
             metrics: Mapping[str, Any]) -> Registration:
    """A new version of ``name`` for ``trial``, alias ``trial-<n>``; returns what was done, for ``unregister``.
    The trial run is tagged ``adprune.pick`` only once the pick has been checked (``pick``)."""
    from mlflow.exceptions import MlflowException

    run_id = TrialRecord.from_trial(trial).mlflow_run_id
    source = None
    if run_id:
        try:
            run = client.get_run(run_id)
            if any(Path(a.path).name == ARCH_FILE for a in client.list_artifacts(run_id, "model")):
                source = f"{run.info.artifact_uri.rstrip('/')}/model"
        except MlflowException:
            run_id = None  # the run is gone: register the exported folder instead
    if source is None:
        source, run_id = out_dir.resolve().as_uri(), None
    created = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"adprune.study": study}, description=(
            f"ADPrune picks of study {study!r}: pruned networks as model.safetensors + model.json, pickle-free; "
            "rebuild with adprune_core.export.load_model. Alias trial-<n> = the newest pick of trial n."))
        created = True
    alias = pick_alias(trial.number)
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    tags = {"adprune.study": study, "adprune.trial": str(trial.number), "adprune.export_dir": str(out_dir.resolve())}
    tags.update({f"adprune.{k}": f"{metrics[k]:.6g}" for k in ("val_top1", "compression_params", "compression_flops",
                                                                "accuracy_change") if metrics.get(k) is not None})
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, description=(
        f"trial {trial.number} of study {study!r}: val_top1 {metrics['val_top1']:.4f}, "
        f"compression_flops {metrics['compression_flops']:.2f}x"))
    registration = Registration(name, version, source, run_id, created, previous)
    try:
        client.set_registered_model_alias(name, alias, version.version)
    except BaseException:
        unregister(client, registration, alias)
        raise
    return registration


def unregister(client: Any, registration: Registration, alias: str) -> None:
    """Undo ``register``: delete the version, point the alias back (or drop it), and drop the registered
    model if the pick made it and it holds no other version."""
    name = registration.name
    client.delete_model_version(name, registration.version.version)
    if registration.previous_alias_version is not None:
        client.set_registered_model_alias(name, alias, registration.previous_alias_version)
    if registration.created_model and not client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)


@contextlib.contextmanager
def _mlflow_env(uri: str) -> Iterator[None]:
    """Point MLflow's tracking and registry at ``uri`` and turn off download bars, for this block only.

    ``download_artifacts(..., registry_uri=...)`` is not honoured for ``models:/`` URIs (MLflow 3.17 resolves
    the alias with a default client), so the environment carries the URI."""
    values = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def download_registered(where: Stores | str | Path, name: str, alias: str, dst: Path) -> Path:
    """The folder behind ``models:/<name>@<alias>`` in the study's registry, downloaded to ``dst``."""
    import mlflow

    uri = Stores.of(where).tracking_uri
    with _mlflow_env(uri):
        return Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}", dst_path=str(dst),
                                                        tracking_uri=uri, registry_uri=uri))
