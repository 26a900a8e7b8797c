"""Read a study for its report: the Optuna study and its MLflow runs, into plain objects and pandas.

Layout read (``study/runner.py``, ``study/tracking.py``): ``<runs>/optuna.db`` (Optuna, every study by
name; the objective names are Optuna's ``metric_names``, ``study.trials.stored_objective_names``; the
study's MLflow parent run, ``study.tracking.parent_run_id``; each trial's record through
``study.trial_record.TrialRecord``),
``<runs>/mlflow.db`` (one experiment per study, named after it: the parent run, a child run per trial,
control runs tagged ``adprune.role=control``), the trainer output ``summary.json`` in each trial's
``out_dir`` (read as ``adprune_core.records.RunSummary``), and the picks: registered model
``adprune-<study>`` (``registered_model_name``) with aliases ``trial-<n>``.

The study is opened by ``reports.study_view.open_study_view``, the one way pick and control open it too.
Nothing here writes to either store (a missing store file is reported, never created).
User errors (no storage, unknown study, ambiguous study) raise ``ConfigError``; a damaged ``summary.json``
raises ``RecordError`` (one line naming the trial, the file and the fix).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from adprune_core.records import SUMMARY_FILE, RecordError, RunSummary
from reports.pareto import CONTROL_KINDS, REPORTED, ControlInput, TrialInput
from reports.study_view import StudyView, open_study_view
from study.stores import Stores, location, sqlite_path
from study.tracking import parent_run_id
from study.trial_record import TrialRecord

DEFAULT_MLFLOW_URL = "http://127.0.0.1:5000"
_PICK_ALIAS = re.compile(r"^trial-(\d+)$")


def pick_alias(number: int) -> str:
    """The registry alias of the newest pick of trial ``number``: ``trial-<n>`` (matched by ``_PICK_ALIAS``)."""
    return f"trial-{number}"


def run_url(base_url: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run, in its model-training view (``study.tracking.ui_url``):
    ``<base>/#/experiments/<experiment id>/runs/<run id>?workflowType=machine_learning``."""
    if not experiment_id or not run_id:
        return None
    from study.tracking import ui_url

    return ui_url(base_url, f"experiments/{experiment_id}/runs/{run_id}")


@dataclass
class StudyRuns:
    """A study as the report reads it: the study (``StudyView``, opened the one way) and its MLflow runs.
    ``runs``: one row per MLflow run of the study's experiment (columns ``run_id``, ``run_name``,
    ``status``, ``start_time``, ``tags.<key>``, ``metrics.<key>``; empty without an MLflow store)."""

    view: StudyView
    runs: pd.DataFrame
    experiment_id: str | None = None
    parent_run_id: str | None = None
    picked: set[int] = field(default_factory=set)
    mlflow_url: str = DEFAULT_MLFLOW_URL
    notes: list[str] = field(default_factory=list)  # what could not be read, for the report
    client: Any = None  # the MlflowClient of the store, None without one

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def runs_dir(self) -> Path:
        return self.view.runs_dir

    @property
    def trials(self) -> list[Any]:
        """Optuna FrozenTrials, by number."""
        return self.view.trials

    @property
    def names(self) -> tuple[str, ...]:
        """The objective names, one per direction."""
        return self.view.objective_names

    @property
    def directions(self) -> tuple[str, ...]:
        return self.view.directions

    def url(self, run_id: str | None) -> str | None:
        return run_url(self.mlflow_url, self.experiment_id, run_id) if run_id in self.run_ids else None

    @property
    def run_ids(self) -> set[str]:
        return set(self.runs["run_id"]) if len(self.runs) else set()


def load_study_data(where: Stores | str | Path, name: str | None = None,
                    mlflow_url: str = DEFAULT_MLFLOW_URL) -> StudyRuns:
    """Study ``name`` (``open_study_view``) and its MLflow runs, from its stores (``Stores.of(where)``)."""

    from study.tracking import mlflow_client

    view = open_study_view(where, name)
    stores, name = view.stores, view.name
    data = StudyRuns(view=view, runs=pd.DataFrame(columns=["run_id"]),
                     parent_run_id=parent_run_id(view.study), mlflow_url=mlflow_url)
    tracking = location(stores.tracking_uri)
    path = sqlite_path(stores.tracking_uri)
    if path is not None and not path.is_file():
        data.notes.append(f"no MLflow store at {tracking}: no links, controls or picks")
        return data
    data.client = client = mlflow_client(stores)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        data.notes.append(f"no MLflow experiment {name!r} in {tracking}: no links, controls or picks")
        return data
    data.experiment_id = exp.experiment_id
    data.runs = runs_frame(client, exp.experiment_id)
    data.picked = picked_trials(client, name)
    return data



def runs_frame(client: Any, experiment_id: str) -> pd.DataFrame:
    """Every (active) run of the experiment as a row, like ``mlflow.search_runs`` but on ``client``.

    Not ``mlflow.search_runs`` itself: it reads the process-wide tracking URI (``mlflow.set_tracking_uri``),
    which a report of one study's stores (a runs folder, or a server named on the command line) must not
    change for its caller; the columns are those of ``mlflow.search_runs`` that the report reads."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for r in page:
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                   "start_time": r.info.start_time, "artifact_uri": r.info.artifact_uri}
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows, columns=None if rows else ["run_id"])


MODEL_PREFIX = "adprune-"


def registered_model_name(study: str) -> str:
    """The registered model of a study's picks: ``adprune-<study>``, with characters MLflow refuses
    (anything but letters, digits, ``_ . -``) turned into ``-``. Kept here, free of torch, for the
    report; ``followup.pick`` registers under it."""
    return MODEL_PREFIX + (re.sub(r"[^A-Za-z0-9_.-]+", "-", study).strip("-.") or "study")


def picked_trials(client: Any, study: str) -> set[int]:
    """Trial numbers with an alias ``trial-<n>`` on the study's registered model (empty if none)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(registered_model_name(study))
    except MlflowException:
        return set()
    return {int(m.group(1)) for alias in (model.aliases or {}) if (m := _PICK_ALIAS.match(alias))}


# --- into the analysis's inputs ----------------------------------------------------------------------

def trial_inputs(data: StudyRuns) -> list[TrialInput]:
    """Every trial as ``reports.pareto.TrialInput``: final metrics from its ``TrialRecord.final``."""
    from study.pareto import feasible

    out = []
    for t in data.trials:
        r = TrialRecord.from_trial(t)
        final = {k: v for k, v in r.final.to_dict().items() if v is not None} if r.final is not None else {}
        # studies from before the never_pruned attr and constraint: a COMPLETE searched trial with no prune round
        never = r.never_pruned if r.never_pruned is not None else (
            not r.baseline and t.state.name == "COMPLETE" and r.final is not None and r.final.prune_rounds == 0)
        out.append(TrialInput(
            number=t.number, state=t.state.name, baseline=r.baseline, seed=r.seed,
            values=tuple(t.values) if t.values else None,
            metrics={m: final[m] for m in REPORTED if m in final}, params=dict(t.params),
            feasible=feasible(t) and not never, stop_reason=r.stop_reason, fail_reason=r.fail_reason,
            run_id=r.mlflow_run_id, url=data.url(r.mlflow_run_id), picked=t.number in data.picked,
            never_pruned=never, reused_epochs=r.reused_epochs or 0,
            train_flops_spent=float(r.train_flops_spent) if r.train_flops_spent is not None else math.nan,
            forked_from=r.forked_from))
    return out


def control_inputs(data: StudyRuns) -> list[ControlInput]:
    """Control runs (tag ``adprune.role=control``) with ``final/<metric>`` metrics and their seed (tag
    ``adprune.control_seed``; None for runs from before it), oldest first."""
    if "tags.adprune.role" not in data.runs:
        return []
    runs = data.runs[data.runs["tags.adprune.role"] == "control"].sort_values("start_time")
    out = []
    for _, r in runs.iterrows():
        of, kind = r.get("tags.adprune.control_of"), r.get("tags.adprune.control_kind")
        if not isinstance(of, str) or not of.strip().isdigit() or not isinstance(kind, str):
            data.notes.append(f"control run {r['run_id']} lacks the tags adprune.control_of / adprune.control_kind; "
                              "left out")
            continue
        metrics = {m: float(r[f"metrics.final/{m}"]) for m in REPORTED
                   if f"metrics.final/{m}" in r and pd.notna(r[f"metrics.final/{m}"])}
        if kind not in CONTROL_KINDS:
            data.notes.append(f"control run {r['run_id']} has kind {kind!r}, not one of {', '.join(CONTROL_KINDS)}")
        seed = r.get("tags.adprune.control_seed")
        seed = int(seed) if isinstance(seed, str) and seed.strip().isdigit() else None
        out.append(ControlInput(int(of), kind, metrics, r["run_id"], data.url(r["run_id"]), seed))
    return out


# --- one trial's history -----------------------------------------------------------------------------

def trial_history(data: StudyRuns, trial: Any) -> tuple[list[dict[str, Any]], list[int], str]:
    """A trial's per-epoch records (``epoch``, ``widths``, ``densities``), its prune epochs, and where they
    were read: the ``summary.json`` in its ``out_dir`` (as stored, else under ``<runs>/studies/<study>/[<key>/]``),
    else its MLflow run's ``width/<layer>`` and ``density/<layer>`` metrics; ([], [], "") if neither."""
    record = TrialRecord.from_trial(trial)
    out_dir = record.out_dir
    if out_dir:
        moved = data.runs_dir / "studies" / data.name  # the runs folder moved: <key>/trial-NNNN (or trial-NNNN)
        for path in (Path(out_dir) / SUMMARY_FILE, moved / Path(out_dir).parent.name / Path(out_dir).name
                     / SUMMARY_FILE, moved / Path(out_dir).name / SUMMARY_FILE):
            if path.is_file():
                summary = read_summary(path, trial.number)
                epochs = [{"epoch": r.epoch, "widths": dict(r.widths), "densities": dict(r.densities)}
                          for r in summary.epochs]
                return epochs, [e.epoch for e in summary.prune_events], str(path)
    run_id = record.mlflow_run_id
    if run_id and run_id in data.run_ids:
        return _history_from_metrics(data.client, run_id)
    return [], [], ""


def read_summary(path: Path, number: int) -> RunSummary:
    """Trial ``number``'s ``summary.json`` at ``path`` (``RunSummary.read``); a one-line ``RecordError`` naming
    the trial and the file when it cannot be read, is not JSON, is of another schema version or lacks a field
    (cut short by a full disk, edited by hand): the report never guesses around a damaged record. The trial's
    MLflow run holds a copy (artifact ``summary.json``) to restore it from; moved away, the report reads the
    run's metrics instead."""
    try:
        return RunSummary.read(path)
    except RecordError as exc:
        raise RecordError(f"trial {number}: {exc}; or move it away, and the report reads the run's metrics "
                          "instead") from None


def _history_from_metrics(client: Any, run_id: str) -> tuple[list[dict[str, Any]], list[int], str]:
    keys = list(client.get_run(run_id).data.metrics)
    by_epoch: dict[int, dict[str, Any]] = {}
    for kind, field_name in (("width/", "widths"), ("density/", "densities")):
        for key in (k for k in keys if k.startswith(kind)):
            for m in client.get_metric_history(run_id, key):
                rec = by_epoch.setdefault(int(m.step), {"epoch": int(m.step), "widths": {}, "densities": {}})
                rec[field_name][key[len(kind):]] = m.value
    prunes = sorted({int(m.step) for m in client.get_metric_history(run_id, "prune_round")}) \
        if "prune_round" in keys else []
    return [by_epoch[e] for e in sorted(by_epoch)], prunes, f"MLflow run {run_id} metrics"
