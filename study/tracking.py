"""MLflow tracking of a study (like optuna-integration's ``MLflowCallback``, but ours).

Layout, in the study's tracking store (``study.stores``: embedded SQLite by default, or a tracking
server): one experiment per study, named after it, artifacts under ``<runs>/mlartifacts/<study>/``
(embedded) or where the server keeps them, tagged ``mlflow.experimentKind=custom_model_development``
so that MLflow 3's UI opens it as model training (runs, metrics, models), not in its GenAI view;
- a parent run for the study (run name = study name, tag ``adprune.role=study``): the study config
  (params, ``study_config.json``), and after every trial the metrics ``pareto_size``
  (``len(study.best_trials)``), ``trials_complete``, ``trials_pruned``, ``trials_failed`` and the
  shared-prefix totals (step = trial number); ``make report`` logs the front itself (``report/``);
- a nested child run per trial (tag ``mlflow.parentRunId``; run name ``trial-NNNN``, ``-baseline``
  for the baseline), tagged ``optuna.trial_number`` and ``optuna.trial_state`` (RUNNING, then COMPLETE,
  PRUNED or FAIL), ``adprune.stop_reason`` / ``adprune.fail_reason`` when it did not complete; params:
  the resolved trainer config (``prune.schedule`` ...) and the suggested values as ``search.<key>``
  (listed in tag ``adprune.searched``); per-epoch metrics (step = epoch): ``train_loss``,
  ``train_top1``, ``val_top1``, ``lr``, ``params``, ``flops``, ``train_flops_cum``, ``seconds``,
  ``density/<layer>``, ``width/<layer>``; at each prune ``prune_round`` and ``params_after``,
  ``flops_after``; final metrics ``final/<key>`` (``final/val_top1``, ``final/compression_flops``, ...);
  artifacts ``summary.json``, ``prune_events.json``, ``density_width.png``, ``model/`` (the pruned
  network). Run status: FINISHED (COMPLETE), KILLED (PRUNED, interrupted), FAILED (FAIL).
- shared prefixes (``study/sharing.py``): the parent run's metrics ``sharing/trials_forked``,
  ``sharing/reused_epochs``, ``sharing/train_flops_spent``, ``sharing/train_flops_saved`` and
  ``sharing/seconds_saved`` (the study so far, step = trial number); a forked trial's run is tagged
  ``adprune.forked_from`` and ``adprune.reused_epochs`` and holds every epoch's metrics, the reused ones
  logged at their steps; every trial's run has the metrics ``train_flops_spent``, ``reused_epochs`` and
  ``reused_seconds``.
- a trial whose worker died (no heartbeat) ends FAILED with ``adprune.fail_reason`` "worker died (no
  heartbeat)" and ``adprune.retried``; its retry's run is tagged ``adprune.retry_of`` (trial number)
  and ``adprune.resumed_from_epoch``, and holds the resumed epochs' metrics too (from the checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adprune_core.callbacks import Callback
from adprune_core.records import SUMMARY_FILE, EpochRecord, PruneEvent, RunSummary
from study.plots import layer_curves, render
from study.sharing import SharingTotals, sharing_totals, trial_sharing
from study.stores import Stores, check_sqlite_file, sqlite_path
from study.trial_record import TrialRecord

LEFT_RUNNING_REASON = "left running by an interrupted process"  # a run (and trial) no process will finish
EPOCH_METRICS = ("train_loss", "train_top1", "val_top1", "lr", "params", "flops", "train_flops_cum", "seconds")
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# MLflow 3's experiment type, read by its UI: "custom_model_development" is model training ("Machine learning"),
# "genai_development" traces and judges. Its value is the UI's ExperimentKind (mlflow/server/js).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI shows every experiment in the view of its GenAI / Model training switch (kept in the browser,
# GenAI at first) and reads that tag only without the switch; a link with this query opens model training.
UI_MODEL_TRAINING_QUERY = "workflowType=machine_learning"
PLOT_FILE = "density_width.png"
_MAX_PARAMS, _MAX_METRICS = 100, 1000  # per log_batch call


def metric_name(name: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / : `` and spaces); anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"prune": {"schedule": "fixed"}}`` -> ``{"prune.schedule": "fixed"}``; values as strings."""
    flat: dict[str, str] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)
    return flat


def _quiet_store_logs() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)


PARENT_RUN_ATTR = "mlflow_parent_run_id"  # the study's user attr: the id of its MLflow parent run


def parent_run_id(study: Any) -> str | None:
    """The id of the study's MLflow parent run (``StudyTracker.open`` records it), or None before one."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    return str(run_id) if run_id else None


class StudyTracker:
    """The study's MLflow experiment and parent run; hands out a ``TrialRun`` per trial."""

    def __init__(self, stores: Stores | str | Path, study_name: str, objective_names: Sequence[str],
                 directions: Sequence[str]) -> None:
        stores = Stores.of(stores)
        self.client = mlflow_client(stores)
        self.study_name, self.names, self.directions = study_name, tuple(objective_names), tuple(directions)
        exp = self.client.get_experiment_by_name(study_name)
        if exp is None:  # a tracking server picks the artifact location itself (and serves the artifacts)
            root = stores.artifact_root
            location = (root / metric_name(study_name).replace("/", "_")).as_uri() if root is not None else None
            self.experiment_id = self.client.create_experiment(
                study_name, artifact_location=location,
                tags={"adprune.study": study_name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # a study made before the tag: mark it (a user's choice stays)
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.parent_id: str | None = None

    def open(self, study: Any, study_config: Mapping[str, Any]) -> str:
        """Create or resume the parent run of ``study`` (its id is kept in the study's user attrs); end
        the child runs left RUNNING by an interrupted process: those whose Optuna trial has finished (a
        trial that another process runs, or starts meanwhile, is not finished and keeps its run)."""
        run = None
        run_id = parent_run_id(study)
        if run_id:
            try:
                run = self.client.get_run(run_id)
            except Exception:  # deleted store or run: start a new parent
                run = None
        if run is None or run.info.experiment_id != self.experiment_id:
            run = self.client.create_run(self.experiment_id, run_name=self.study_name,
                                         tags={"adprune.role": "study", "optuna.study_name": self.study_name,
                                               "adprune.objectives": ",".join(self.names)})
            study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
            self._log_params(run.info.run_id, flatten(study_config))
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_id = run.info.run_id
        self._log_json(self.parent_id, "study_config.json", study_config)
        self._close_stale_children({t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()})
        return self.parent_id

    def attach(self, parent_run_id: str) -> None:
        """Use an existing parent run (opened by the process that started this worker)."""
        self.parent_id = parent_run_id

    def _close_stale_children(self, finished: set[int]) -> None:
        """Child runs left RUNNING by an interrupted process: their Optuna trial (numbers ``finished``) ended."""
        stale = self.client.search_runs([self.experiment_id], max_results=1000, filter_string=(
            f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'"))
        for run in stale:
            number = run.data.tags.get("optuna.trial_number", "")
            if number.isdigit() and int(number) in finished:
                end_failed_run(self.client, run.info.run_id, LEFT_RUNNING_REASON)

    def start_trial(self, number: int, baseline: bool, params: Mapping[str, Any], config: Mapping[str, Any],
                    out_dir: Path, retry_of: int | None = None) -> TrialRun:
        """A nested child run for trial ``number``: tags, resolved config and searched values as params."""
        tags = {"mlflow.parentRunId": self.parent_id, "optuna.study_name": self.study_name,
                "optuna.trial_number": str(number), "optuna.trial_state": "RUNNING",
                "adprune.baseline": str(baseline).lower(), "adprune.searched": ",".join(params),
                "adprune.out_dir": str(out_dir)}
        if retry_of is not None:
            tags["adprune.retry_of"] = str(retry_of)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:04d}" + ("-baseline" * baseline),
                                     tags=tags)
        flat = flatten(config)
        flat.update({f"search.{k}": json.dumps(v) if isinstance(v, bool) else str(v) for k, v in params.items()})
        self._log_params(run.info.run_id, flat)
        return TrialRun(self.client, run.info.run_id, run.info.run_name)

    def after_trial(self, study: Any, trial: Any) -> SharingTotals:
        """Optuna study callback: the trial's final state tag, the parent's Pareto front and counts; returns
        the study's shared-prefix totals so far (for the progress line)."""
        run_id = TrialRecord.from_trial(trial).mlflow_run_id
        if run_id:
            self.client.set_tag(run_id, "optuna.trial_state", trial.state.name)
        trials = study.get_trials(deepcopy=False)
        front = study.best_trials  # Optuna's front of the feasible COMPLETE trials; make report writes the rest
        counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        shared = sharing_totals(t for t in trials if t.state.name in counts)
        now, step = _now_ms(), trial.number
        from mlflow.entities import Metric

        self.client.log_batch(self.parent_id, metrics=[
            Metric("pareto_size", len(front), now, step), Metric("trials_complete", counts["COMPLETE"], now, step),
            Metric("trials_pruned", counts["PRUNED"], now, step), Metric("trials_failed", counts["FAIL"], now, step),
            Metric("sharing/trials_forked", shared.forked, now, step),
            Metric("sharing/reused_epochs", shared.reused_epochs, now, step),
            Metric("sharing/train_flops_spent", shared.train_flops_spent, now, step),
            Metric("sharing/train_flops_saved", shared.train_flops_saved, now, step),
            Metric("sharing/seconds_saved", shared.reused_seconds, now, step)])
        return shared

    def close(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status)

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + _MAX_PARAMS])

    def _log_json(self, run_id: str, name: str, payload: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2, default=float))
            self.client.log_artifact(run_id, str(path))


class TrialRun(Callback):
    """A trial's child run; a trainer callback (per-epoch metrics, prune events) and ``finish``."""

    def __init__(self, client: Any, run_id: str, name: str = "") -> None:
        self.client, self.run_id, self.name = client, run_id, name
        self.rounds = 0

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def on_resume(self, summary: RunSummary) -> None:
        """The run continues a dead trial's checkpoint: log the finished epochs it did not recompute."""
        self.client.set_tag(self.run_id, "adprune.resumed_from_epoch", str(summary.resumed_from_epoch))
        if summary.forked_from:  # the dead trial had forked: so did this run
            self._tag_fork(summary)
        self._log_epochs(summary)

    def on_fork(self, summary: RunSummary) -> None:
        """The run forked from a snapshot: tag which, and log the reused epochs 1..e-1 at their steps."""
        self._tag_fork(summary)
        self._log_epochs(summary)

    def _tag_fork(self, summary: RunSummary) -> None:
        shared = trial_sharing(summary)
        self.client.set_tag(self.run_id, "adprune.forked_from", str(shared.forked_from))
        self.client.set_tag(self.run_id, "adprune.reused_epochs", str(shared.reused_epochs))

    def _log_epochs(self, summary: RunSummary) -> None:
        events = {e.epoch: e for e in summary.prune_events}
        for record in summary.epochs:
            self.on_epoch_end(record)
            if record.epoch in events:
                self.on_prune(events[record.epoch])

    def on_epoch_end(self, record: EpochRecord) -> None:
        from mlflow.entities import Metric

        now, step = _now_ms(), record.epoch
        metrics = [Metric(k, float(getattr(record, k)), now, step) for k in EPOCH_METRICS]
        for kind, layers in (("density", record.densities), ("width", record.widths)):
            metrics += [Metric(metric_name(f"{kind}/{layer}"), float(v), now, step) for layer, v in layers.items()]
        for i in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _MAX_METRICS])
        return None

    def on_prune(self, event: PruneEvent) -> None:
        from mlflow.entities import Metric

        self.rounds += 1
        now, step = _now_ms(), event.epoch
        metrics = [Metric("prune_round", self.rounds, now, step),
                   Metric("params_after", event.params_after, now, step),
                   Metric("flops_after", event.flops_after, now, step),
                   # the cut network before any retraining (batch norm recalibrated)
                   Metric("val_top1_after_cut", event.val_top1_after_cut, now, step)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, state: str, reason: str | None = None, out_dir: Path | None = None,
               interrupted: bool = False) -> None:
        """Log what the run left in ``out_dir`` (summary, plot, model), tag ``state`` and why, end the run."""
        from mlflow.entities import Metric

        summary_path = out_dir / SUMMARY_FILE if out_dir is not None else None
        summary = RunSummary.read(summary_path) if summary_path and summary_path.is_file() else None
        tags = {"optuna.trial_state": state}
        if summary:
            final = summary.final.to_dict() if summary.final is not None else {}
            tags["adprune.status"] = str(final.get("status", ""))
            now = _now_ms()
            metrics = [Metric(metric_name(f"final/{k}"), float(v), now, 0) for k, v in final.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
            shared = trial_sharing(summary)
            metrics += [Metric(k, float(getattr(shared, k) or 0), now, 0)
                        for k in ("train_flops_spent", "reused_epochs", "reused_seconds")]
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
            self.client.log_artifact(self.run_id, str(summary_path))
            with tempfile.TemporaryDirectory() as tmp:
                events = Path(tmp) / "prune_events.json"
                events.write_text(json.dumps([e.to_dict() for e in summary.prune_events], indent=2, default=float))
                self.client.log_artifact(self.run_id, str(events))
                if summary.epochs:
                    plot = render(layer_curves(summary), Path(tmp) / PLOT_FILE, title=f"{self.name}: {state}")
                    self.client.log_artifact(self.run_id, str(plot))
        model_dir = out_dir / "model" if out_dir is not None else None
        if model_dir is not None and model_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(model_dir), artifact_path="model")
        if reason:
            tags["adprune.stop_reason" if state == "PRUNED" else "adprune.fail_reason"] = reason[:5000]
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else RUN_STATUS.get(state, "FAILED"))


def ui_url(base_url: str, page: str = "experiments") -> str:
    """A link into the MLflow UI at ``base_url`` (``http://127.0.0.1:5000``) that opens ``page``
    (``experiments/<id>/runs/<run id>``) in its model-training view."""
    return f"{base_url.rstrip('/')}/#/{page}?{UI_MODEL_TRAINING_QUERY}"


def mlflow_client(stores: Stores | str | Path) -> Any:
    """An ``MlflowClient`` on the study's tracking store (``Stores.tracking_uri``), its model registry too."""
    _quiet_store_logs()
    # MLflow prints a "View run ... at <server URL>" line per finished run: noise, and the URL may hold a password
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    uri = Stores.of(stores).tracking_uri
    if sqlite_path(uri) is not None:
        check_sqlite_file(sqlite_path(uri), "the MLflow store")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def end_failed_run(client: Any, run_id: str, reason: str, **tags: str) -> None:
    """End a trial's run FAILED, tagged ``optuna.trial_state=FAIL``, why, and ``tags`` (``adprune.<key>``)."""
    for key, value in (("optuna.trial_state", "FAIL"), ("adprune.fail_reason", reason),
                       *((f"adprune.{k}", v) for k, v in tags.items())):
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FAILED")


def end_dead_trial_run(stores: Stores | str | Path, run_id: str, reason: str, retried: bool) -> None:
    """End the MLflow run of a trial whose worker died: FAILED, tagged why and whether it was retried."""
    end_failed_run(mlflow_client(stores), run_id, reason, retried=str(retried).lower())


def _now_ms() -> int:
    return int(time.time() * 1000)
