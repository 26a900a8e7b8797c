"""The study's trials in the Optuna storage: opening it, creating or loading the study, stale trials,
retries, counting, the baseline.

- ``n_trials`` counts every trial of the study, the baseline and failed ones included, except a trial
  whose worker died and that was retried (its retry counts instead) and a trial that was not run because
  the study already held its target when it started (``TARGET_HELD_REASON``): ``counted_trials``.
- Every process stops at the target (``study.workers``): ``target_reached`` after each trial, and
  ``held_before`` when a trial starts, which settles two processes that started a trial at once.
- The first trial is the dense baseline (``prune.schedule=none``), enqueued with user attr
  ``baseline=True`` when the study has none that completed or is waiting: ``enqueue_baseline``.
- Fault tolerance: every running trial beats a heartbeat into the Optuna storage (every
  ``HEARTBEAT_INTERVAL_S``). A trial whose heartbeat is older than ``HEARTBEAT_GRACE_S`` lost its
  worker (SIGKILL, out of memory, a dead machine): Optuna's ``fail_stale_trials``, which every worker
  runs before each trial and ``fail_stale_trials`` here runs when a session starts, marks it FAIL and
  calls ``RetryDeadWorkerTrials``: Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues a copy (same
  params and user attrs, the baseline flag included) and the dead trial's MLflow run ends FAILED. The
  copy continues from the dead trial's last epoch checkpoint (``study/objective.py``). A session that
  finds RUNNING trials waits about the grace period for their heartbeats to go stale; trials that never
  had one (left by a process without heartbeats) are marked FAIL at once and not retried.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from adprune_core.errors import ConfigError
from study.objective import retry_history
from study.pareto import feasible
from study.retries import QuietTrialEnd, enqueue_retry
from study.space import StudyConfig, split_change
from study.stores import (
    STORAGE_FLAG,
    Stores,
    backend,
    check_sqlite_file,
    connection_error,
    engine_kwargs,
    serialize_sqlite_transactions,
    sqlite_path,
)
from study.tracking import LEFT_RUNNING_REASON, end_dead_trial_run
from study.trial_record import ACCURACY_DROP_ATTR, FAIL_REASON_ATTR, TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SPEC_ATTR = "study_spec"  # study user attr: the study config as plain data, for workers that join
TARGET_ATTR = "trials_target"  # study user attr: n_trials of the last ``run_study``
FOLDER_ATTR = "trials_folder"  # study user attr: its trials' folder under <runs>/studies/<name>/ (trials_dir)


HEARTBEAT_INTERVAL_S = 10  # a running trial writes its heartbeat this often
HEARTBEAT_GRACE_S = 30  # a trial whose heartbeat is older lost its worker
MAX_RETRY = 2  # retries of a trial whose worker died (a trial that kills its workers is not retried forever)
HEARTBEAT_ENV = ("ADPRUNE_HEARTBEAT_INTERVAL_S", "ADPRUNE_HEARTBEAT_GRACE_S")  # overrides, e.g. for tests
DEAD_WORKER_REASON = "worker died (no heartbeat)"
TARGET_HELD_REASON = "not run: the study already held its target when it started"  # fail_reason; not counted


class TargetHeld(QuietTrialEnd):
    """Ends a trial, before it runs, that another process's trials leave without a place in the target."""


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: the module constants, or the environment's overrides."""
    values = []
    for name, default in zip(HEARTBEAT_ENV, (HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S)):
        raw = os.environ.get(name, "")
        if not raw:
            values.append(default)
            continue
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"${name}: {raw!r} must be a whole number of seconds >= 1; unset it for {default}")
        values.append(int(raw))
    interval, grace = values
    if grace <= interval:
        raise ConfigError(f"${HEARTBEAT_ENV[1]}: grace period {grace} s must exceed the heartbeat interval "
                          f"{interval} s, or every trial would look dead between two heartbeats")
    return interval, grace


class RetryDeadWorkerTrials:
    """Optuna's heartbeat-stale trial callback: retry the trial and end its MLflow run FAILED.

    Optuna calls it (from ``fail_stale_trials``, in whichever process notices) with a trial it has just
    marked FAIL because its heartbeat stopped. ``study.retries.enqueue_retry`` enqueues a WAITING copy
    with the same params and the trial's own user attrs (``baseline`` included, the dead run's not) and
    records the retry history in the copy's system attrs, as Optuna's ``RetryHeartbeatStaleTrialCallback``
    does, up to ``max_retry`` dead workers per original trial."""

    def __init__(self, stores: Stores, max_retry: int = MAX_RETRY) -> None:
        self.stores, self.max_retry = stores, max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = enqueue_retry(study, trial, max_died=self.max_retry)
        run_id = TrialRecord.from_trial(trial).mlflow_run_id
        if run_id:
            try:
                end_dead_trial_run(self.stores, run_id, DEAD_WORKER_REASON, retried)
            except Exception as exc:  # tracking trouble must not stop the study: the Optuna side is done
                logging.getLogger(__name__).warning("could not mark MLflow run %s FAILED: %s", run_id, exc)


def optuna_storage(stores: Stores | str | Path) -> optuna.storages.RDBStorage:
    """The study's Optuna storage (``stores.optuna_url``), with trial heartbeats and
    ``RetryDeadWorkerTrials``. Shared by several processes: SQLite transactions are serialised and wait
    up to a minute for another process's lock, servers get a connect timeout (``study.stores``). A
    storage that cannot be opened is a one-line ``ConfigError``, its password redacted."""
    stores = Stores.of(stores)
    url = stores.optuna_url
    interval, grace = heartbeat_settings()
    if backend(url) == "sqlite":
        check_sqlite_file(sqlite_path(url), "the Optuna storage")
        sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=interval, grace_period=grace,
                heartbeat_stale_trial_callback=RetryDeadWorkerTrials(stores))
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise connection_error(exc, url, "the Optuna storage", STORAGE_FLAG) from None
    if backend(url) == "sqlite":
        serialize_sqlite_transactions(storage.engine)
    return storage


def stored_objective_names(study: optuna.Study) -> tuple[str, ...] | None:
    """The names of ``study``'s objectives: Optuna's ``metric_names`` (``open_study`` sets them), or, for a
    study made before that, its user attr ``objectives`` (["val_top1 (maximize)", ...]); None when the
    study has neither (it was not made by ``adprune study``)."""
    if study.metric_names is not None:
        return tuple(study.metric_names)
    stored = study.user_attrs.get("objectives")
    return tuple(str(s).split(" (")[0] for s in stored) if stored else None


def open_study(cfg: StudyConfig, name: str, stores: Stores | str | Path,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or load study ``name`` (in ``storage``, default ``optuna_storage(stores)``); check it
    optimises the same objectives."""
    stores = Stores.of(stores)
    stores.runs_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage or optuna_storage(stores), study_name=name,
                                directions=list(cfg.directions),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))
    stored = stored_objective_names(study)
    mine = [f"{n} ({d})" for n, d in zip(cfg.objective_names, cfg.directions)]
    have = [d.name.lower() for d in study.directions]
    if (stored is not None and stored != cfg.objective_names) or have != list(cfg.directions):
        theirs = [f"{n} ({d})" for n, d in zip(stored, have)] if stored else have
        raise ConfigError(f"study {name!r} in {stores.describe()} optimises {theirs}, not {mine}; "
                          "use another --name (or --runs-dir / --storage) for different objectives")
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental in the Optuna we pin (since 3.2), stable in its interface
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objective_names))
    changed = split_change(study.user_attrs.get(SPEC_ATTR), cfg.trainer)
    if changed and study.get_trials(deepcopy=False):
        raise ConfigError(f"study {name!r} in {stores.describe()} scored its trials on another validation split "
                          f"({changed}); their values would not compare: use another --name for this split, or "
                          "the study's own data settings")
    if FOLDER_ATTR not in study.user_attrs:  # an older study with trials keeps writing where it did
        study.set_user_attr(FOLDER_ATTR, "" if study.get_trials(deepcopy=False) else new_folder_key())
    return study


def new_folder_key() -> str:
    """A name for a new study's trial folder: its creation time and a random part, unique per study
    instance (a study made again under the same name, in a new or emptied store, gets another one)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def trials_dir(study: optuna.Study, runs_dir: str | Path) -> Path:
    """Where the trials of ``study`` write on this machine: ``<runs>/studies/<name>/<key>/``, ``<key>``
    from the study's user attr ``trials_folder`` (``<runs>/studies/<name>/`` for a study made before it)."""
    base = Path(runs_dir) / "studies" / study.study_name
    key = study.user_attrs.get(FOLDER_ATTR) or ""
    return base / key if key else base


def load_existing_study(name: str, storage: optuna.storages.RDBStorage, stores: Stores) -> optuna.Study:
    """Study ``name`` as it is in ``storage``; a one-line ``ConfigError`` naming the known studies if absent."""
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise ConfigError(f"--study: no study {name!r} in {stores.describe()}; known: {', '.join(names) or 'none'} "
                          "(start it with make study, then join it)")
    return optuna.load_study(study_name=name, storage=storage)


@dataclass
class StaleTrials:
    dead: list[int]  # heartbeat stopped: FAIL, retried (Optuna's mechanism, ``RetryDeadWorkerTrials``)
    left_running: list[int]  # never had a heartbeat: FAIL with ``fail_reason``, not retried
    alive: list[int]  # heartbeat still fresh after the wait: another process runs them; left alone


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, wait_s: float | None = None,
                      log: Any = print) -> StaleTrials:
    """Mark the RUNNING trials of ``study`` (in ``storage``) whose process is gone FAIL.

    Trials our objective ran (user attr ``worker``) have heartbeats: Optuna's ``fail_stale_trials``
    fails those whose heartbeat is older than the grace period and retries them. This waits up to
    ``wait_s`` (default: grace period + interval + 2 s) for the heartbeats of such trials to go stale,
    so a session started right after a crash still finds its dead trials. Other RUNNING trials were
    left by a process without heartbeats (an older version, a bare ``study.ask()``): FAIL at once with
    ``fail_reason`` "left running by an interrupted process", not retried."""
    running_before = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running_before:
        return StaleTrials([], [], [])
    before = {t.number for t in running_before}
    study_id = storage.get_study_id_from_name(study.study_name)
    left = [t.number for t in running_before if TrialRecord.from_trial(t).worker is None]
    for number in left:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, LEFT_RUNNING_REASON)
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    interval, grace = heartbeat_settings()
    wait_s = grace + interval + 2 if wait_s is None else wait_s  # the last beat may be an interval old
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not running or time.monotonic() >= deadline:
            break
        if not waited:
            log(f"waiting up to {wait_s:g} s for the heartbeats of running trial(s) "
                f"{', '.join(map(str, running))}: a trial whose heartbeat stops for {grace} s lost its worker")
            waited = True
        time.sleep(1.0)
    # failed by the heartbeat: FAIL without a reason (a trial that raised records one, see objective.py)
    dead = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in before and t.number not in left and TrialRecord.from_trial(t).fail_reason is None]
    return StaleTrials(dead=dead, left_running=left, alive=running)


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that count towards ``n_trials``: every COMPLETE, PRUNED and FAIL trial except
    the FAIL trials that a retry replaces (their worker died; the retry counts once it finishes) and those
    that were not run (``TARGET_HELD_REASON``)."""
    replaced = {n for t in trials for n in retry_history(t)}
    return [t for t in trials if t.state in FINISHED and t.number not in replaced and was_run(t)]


def was_run(trial: optuna.trial.FrozenTrial) -> bool:
    """False for a trial that ended before it ran: the study already held its target when it started
    (``TARGET_HELD_REASON``, ``study.workers.StopAtTarget.skip_surplus``)."""
    return TrialRecord.from_trial(trial).fail_reason != TARGET_HELD_REASON


def target_reached(study: optuna.Study, target: int) -> bool:
    """Whether the study holds ``target`` trials: those that count (``counted_trials``) plus those running."""
    trials = study.get_trials(deepcopy=False)
    return len(counted_trials(trials)) + sum(t.state == TrialState.RUNNING for t in trials) >= target


def held_before(trials: list[optuna.trial.FrozenTrial], number: int) -> int:
    """How many trials of a study (``trials``) come before the RUNNING trial ``number`` (pure): those that
    count (``counted_trials``) and the RUNNING ones numbered lower. Numbers order the trials that started
    at once the same way in every process: Optuna numbers a trial when it creates it, a new trial is
    created only when no WAITING one is left to pop, and popping and numbering are atomic in the storage;
    so of two trials that both found the study one short of its target, the higher-numbered sees the
    other RUNNING and gives way."""
    return len(counted_trials(trials)) + sum(t.state == TrialState.RUNNING and t.number < number for t in trials)


def enqueue_baseline(study: optuna.Study) -> bool:
    """Enqueue the dense baseline unless one completed or waits; returns whether it enqueued."""
    alive = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    if any(TrialRecord.from_trial(t).baseline for t in study.get_trials(deepcopy=False, states=alive)):
        return False
    study.enqueue_trial({}, user_attrs=TrialRecord(baseline=True).to_attrs())
    return True


def baseline_waiting(study: optuna.Study) -> bool:
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return any(TrialRecord.from_trial(t).baseline for t in waiting)


def trial_line(trial: Any, names: tuple[str, ...]) -> str:
    record = TrialRecord.from_trial(trial)
    notes = ["baseline"] if record.baseline else []
    if record.retry_of is not None:
        resumed = record.resumed_from_epoch
        notes.append(f"retry of trial {record.retry_of}" + (f", resumed after epoch {resumed}" if resumed else ""))
    reused = record.reused_epochs
    if reused:  # forked from a snapshot (study/sharing.py)
        notes.append(f"reused {f'epochs 1-{reused}' if reused > 1 else 'epoch 1'}: "
                     f"{record.reused_seconds or 0:.1f} s not retrained")
    if record.snapshot_skipped:
        notes.append("a snapshot not written: the share.snapshot_gb limit (see its snapshot_skipped)")
    tag = " (" + "; ".join(notes) + ")" if notes else ""
    head = f"trial {trial.number}{tag} {trial.state.name}"
    if trial.state == TrialState.COMPLETE:
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values))
        if record.never_pruned:
            return f"{head}: {values}; never pruned (no cut happened: the dense baseline's network again, kept off " \
                   "the front)"
        comp = record.compression_flops
        return f"{head}: {values}" + (f", compression_flops {comp:.2f}x" if comp else "") + infeasible_note(trial)
    return f"{head}: {record.stop_reason or record.fail_reason or ''}"


def infeasible_note(trial: Any) -> str:
    """``"; infeasible: ..."`` naming the broken accuracy constraint in points, or "" for a feasible trial."""
    if feasible(trial):
        return ""
    drop, excess = TrialRecord.from_trial(trial).accuracy_drop, trial.constraints.get(ACCURACY_DROP_ATTR)
    if drop is None or excess is None or excess <= 0:
        return "; infeasible"
    return (f"; infeasible: val_top1 {100 * drop:.1f} points below the baseline's, the limit is "
            f"{100 * (drop - excess):.1f} (constraints.max_accuracy_drop)")
