"""Run a study: stores, sampler, the baseline, resuming, the trial loop with a progress display.

- Stores, both embedded SQLite in one runtime folder (``runs/`` by default): Optuna's
  ``<runs>/optuna.db``, MLflow's ``<runs>/mlflow.db`` with artifacts under ``<runs>/mlartifacts/``;
  trainer output per trial under ``<runs>/studies/<study>/trial-NNNN/``.
- ``n_trials`` counts every trial of the study, the baseline and failed ones included, except a trial
  whose worker died and that was retried (its retry counts instead): a new study runs ``n_trials``;
  the same name again resumes and adds ``n_trials - existing`` (none if already there).
- The first trial is the dense baseline (``prune.schedule=none``), enqueued with user attr
  ``baseline=True`` when the study has none that completed or is waiting.
- A resumed study reseeds its sampler with (seed, finished trials), so that a second session does
  not replay the first session's random suggestions; a fresh study uses the seed as is, so the same
  seed gives the same suggestions.
- Several worker processes may share one study (``workers`` > 1, ``adprune study --workers k`` or
  ``--gpus 0,1 --workers-per-gpu k``): this process prepares the study, each worker runs a fixed
  quota of trials against the same SQLite files (writers wait for each other's locks), and the
  total is exact.
- Fault tolerance: every running trial beats a heartbeat into the Optuna storage (every
  ``HEARTBEAT_INTERVAL_S``). A trial whose heartbeat is older than ``HEARTBEAT_GRACE_S`` lost its
  worker (SIGKILL, out of memory, a dead machine): Optuna's ``fail_stale_trials``, which every worker
  runs before each trial and this module runs when a session starts, marks it FAIL and calls
  ``RetryDeadWorkerTrials``: Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues a copy (same
  params and user attrs, the baseline flag included) and the dead trial's MLflow run ends FAILED. The
  copy continues from the dead trial's last epoch checkpoint (``study/objective.py``). A session that
  finds RUNNING trials waits about the grace period for their heartbeats to go stale; trials that never
  had one (left by a process without heartbeats) are marked FAIL at once and not retried.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from tqdm.auto import tqdm

from adprune_core import interrupts
from adprune_core.config import config_to_dict
from adprune_core.data import load_dataset
from adprune_core.errors import ConfigError
from study.objective import WORKER_ATTR, Objective, retry_history
from study.pareto import describe_trial, pareto_trials
from study.samplers import SAMPLERS
from study.space import StudyConfig, study_config_from_spec
from study.stores import (
    STORAGE_FLAG,
    Stores,
    backend,
    check_tracking_reachable,
    connection_error,
    engine_kwargs,
    serialize_sqlite_transactions,
)
from study.tracking import StudyTracker, end_dead_trial_run

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SPEC_ATTR = "study_spec"  # study user attr: the study config as plain data, for workers that join
TARGET_ATTR = "trials_target"  # study user attr: n_trials of the last ``run_study``


HEARTBEAT_INTERVAL_S = 10  # a running trial writes its heartbeat this often
HEARTBEAT_GRACE_S = 30  # a trial whose heartbeat is older lost its worker
MAX_RETRY = 2  # retries of a trial whose worker died (a trial that kills its workers is not retried forever)
HEARTBEAT_ENV = ("ADPRUNE_HEARTBEAT_INTERVAL_S", "ADPRUNE_HEARTBEAT_GRACE_S")  # overrides, e.g. for tests
DEAD_WORKER_REASON = "worker died (no heartbeat)"
LEFT_RUNNING_REASON = "left running by an interrupted process"


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
    marked FAIL because its heartbeat stopped. Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues a
    WAITING copy with the same params and user attrs (``baseline`` included) and records the retry
    history in the copy's system attrs, up to ``max_retry`` times per original trial."""

    def __init__(self, stores: Stores, max_retry: int = MAX_RETRY) -> None:
        self.stores, self.max_retry = stores, max_retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = len(retry_history(trial)) < self.max_retry  # Optuna's own rule, see the class docstring
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
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
        Path(url.partition(":///")[2]).parent.mkdir(parents=True, exist_ok=True)
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


@dataclass
class StudyReport:
    name: str
    existing: int  # counted trials before this session (see ``counted_trials``)
    ran: int  # trials run in this session
    trials: list[dict[str, Any]]  # every trial, described
    pareto: list[dict[str, Any]]  # the Pareto front, described
    retried: list[int] = field(default_factory=list)  # FAIL trials whose worker died and that were retried


def study_record(cfg: StudyConfig) -> dict[str, Any]:
    """The study config as plain data (logged with the parent run)."""
    return {"source": cfg.source, "objectives": dict(zip(cfg.objective_names, cfg.directions)),
            "sampler": vars(cfg.sampler), "max_accuracy_drop": cfg.max_accuracy_drop,
            "stopper": vars(cfg.stopper) if cfg.stopper else None,
            "space": {d.key: {k: v for k, v in vars(d).items() if k != "key" and v not in (None, (), False)}
                      for d in cfg.space},
            "trainer": config_to_dict(cfg.trainer)}


def open_study(cfg: StudyConfig, name: str, stores: Stores | str | Path,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or load study ``name`` (in ``storage``, default ``optuna_storage(stores)``); check it
    optimises the same objectives."""
    stores = Stores.of(stores)
    stores.runs_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage or optuna_storage(stores), study_name=name,
                                directions=list(cfg.directions),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))
    stored = study.user_attrs.get("objectives")
    mine = [f"{n} ({d})" for n, d in zip(cfg.objective_names, cfg.directions)]
    have = [d.name.lower() for d in study.directions]
    if (stored is not None and stored != mine) or have != list(cfg.directions):
        raise ConfigError(f"study {name!r} in {stores.describe()} optimises {stored or have}, not {mine}; "
                          "use another --name (or --runs-dir / --storage) for different objectives")
    if stored is None:
        study.set_user_attr("objectives", mine)
    return study


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
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not before:
        return StaleTrials([], [], [])
    study_id = storage.get_study_id_from_name(study.study_name)
    left = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if WORKER_ATTR not in t.user_attrs]
    for number in left:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_user_attr(trial_id, "fail_reason", LEFT_RUNNING_REASON)
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
            if t.number in before and t.number not in left and "fail_reason" not in t.user_attrs]
    return StaleTrials(dead=dead, left_running=left, alive=running)


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that count towards ``n_trials``: every COMPLETE, PRUNED and FAIL trial except
    the FAIL trials that a retry replaces (their worker died; the retry counts once it finishes)."""
    replaced = {n for t in trials for n in retry_history(t)}
    return [t for t in trials if t.state in FINISHED and t.number not in replaced]


def enqueue_baseline(study: optuna.Study) -> bool:
    """Enqueue the dense baseline unless one completed or waits; returns whether it enqueued."""
    alive = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    if any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=alive)):
        return False
    study.enqueue_trial({}, user_attrs={"baseline": True})
    return True


def sampler_seed(seed: int, finished: int) -> int:
    """The sampler's seed for a session that starts with ``finished`` trials done."""
    return seed if finished == 0 else (seed * 1_000_003 + finished) % 2**32


def _baseline_waiting(study: optuna.Study) -> bool:
    return any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def split_quotas(trials: int, workers: int) -> list[int]:
    """Trials per worker: ``trials`` shared as evenly as possible, no worker given none."""
    base, extra = divmod(trials, workers)
    return [q for q in (base + (1 if r < extra else 0) for r in range(workers)) if q > 0]


def run_study(cfg: StudyConfig, name: str, n_trials: int, stores: Stores | str | Path, progress: bool = True,
              log: Any = print, workers: int = 1,
              spawn: Callable[[int, int, str], subprocess.Popen] | None = None) -> StudyReport:
    """Run (or resume) study ``name`` until it holds ``n_trials`` trials; see the module docstring.

    ``stores``: where the study lives (``study.stores.Stores``; a runtime folder means its embedded
    SQLite stores). With ``workers`` > 1 this process prepares the study (stale trials, the baseline,
    the MLflow parent run) and ``spawn(rank, quota, parent_run_id)`` starts each worker process, which
    runs ``run_worker`` for its fixed quota of trials: the total is exact, with no race between workers.
    The study's config and ``n_trials`` are stored with it, for workers that join it (``join_study``)."""
    if n_trials < 1:
        raise ConfigError(f"--trials: {n_trials} must be >= 1 (the baseline counts as one)")
    stores = Stores.of(stores)
    runs_dir = stores.runs_dir
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    runs_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna_storage(stores)
    check_tracking_reachable(stores)
    study = open_study(cfg, name, stores, storage)
    study.set_user_attr(SPEC_ATTR, json.loads(cfg.spec))
    study.set_user_attr(TARGET_ATTR, n_trials)
    stale = fail_stale_trials(study, storage, log=log)
    if stale.left_running:
        log(f"marked {len(stale.left_running)} trial(s) left running by an interrupted process as FAIL")
    if stale.dead:
        log(f"marked {len(stale.dead)} trial(s) whose worker died as FAIL ({DEAD_WORKER_REASON}): "
            f"{', '.join(map(str, stale.dead))}; each is retried (at most {MAX_RETRY} times) from its last "
            "epoch checkpoint")
    if stale.alive:
        log(f"trial(s) {', '.join(map(str, stale.alive))} still beat their heartbeat: another process runs them")
    trials = study.get_trials(deepcopy=False)
    finished = len(counted_trials(trials))
    ended = sum(t.state in FINISHED for t in trials)  # retried FAILs too: any earlier draw moves the seed
    study.sampler = SAMPLERS.get(cfg.sampler.name)(cfg.sampler, sampler_seed(cfg.sampler.seed, ended))
    to_run = max(0, n_trials - finished)
    data = load_dataset(cfg.trainer.data) if to_run else None  # a data error ends the command before any trial
    if to_run and enqueue_baseline(study):
        log("enqueued the dense baseline (prune.schedule=none) as the first trial" if not trials else
            "re-enqueued the dense baseline (no completed baseline in the study)")
    _warn_epochs(study, cfg, log)
    if trials:
        log(f"resuming study {name!r}: {finished} trial(s) done; "
            + (f"adding {to_run} to reach {n_trials}" if to_run else f"already >= {n_trials}, nothing to run"))
    else:
        log(f"new study {name!r}: {to_run} trial(s), the baseline included")

    if data is not None:
        tracker = StudyTracker(stores, name, cfg.objective_names, cfg.directions)
        tracker.open(study, study_record(cfg), alive_run_ids=_run_ids(study, stale.alive))
        objective = Objective(cfg, data, runs_dir / "studies" / name, tracker, progress=progress)
        bar = tqdm(total=to_run, unit="trial", desc=f"study {name}", disable=not progress, dynamic_ncols=True,
                   position=0)

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            tracker.after_trial(study, trial)
            line = _trial_line(trial, cfg.objective_names)
            if progress:
                bar.write(line)
            else:
                log(line)
            bar.update(1)
            interrupts.check()  # between two trials: a Ctrl-C stops here, the finished trial recorded

        status = "FAILED"
        with interrupts.deferred():  # the first Ctrl-C stops at a safe point: after a step, between trials
            try:
                if workers > 1:
                    if spawn is None:
                        raise ValueError("several workers need a spawn function")
                    # The baseline runs here, alone and first: the workers' constraints and stopper compare with it.
                    here = 1 if _baseline_waiting(study) else 0
                    study.optimize(objective, n_trials=here, catch=(Exception,), callbacks=[after])
                    bar.close()
                    status = _wait_for_workers(spawn, split_quotas(to_run - here, workers), tracker.parent_id, log)
                    if status == "FAILED":  # a worker died: its share of the study is done here, nothing is lost
                        _make_good(study, storage, objective, after, n_trials, log)
                        status = "FINISHED"
                else:
                    study.optimize(objective, n_trials=to_run, catch=(Exception,), callbacks=[after])
                    status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                bar.close()
                tracker.close(status)

    return _report(study, cfg, name, finished, to_run)


def _report(study: optuna.Study, cfg: StudyConfig, name: str, finished: int, ran: int) -> StudyReport:
    trials = study.get_trials(deepcopy=False)
    retried = sorted({n for t in trials for n in retry_history(t)})
    return StudyReport(name=name, existing=finished, ran=ran,
                       trials=[describe_trial(t, cfg.objective_names) for t in trials],
                       pareto=[describe_trial(t, cfg.objective_names) for t in pareto_trials(trials, cfg.directions)],
                       retried=retried)


def _run_ids(study: optuna.Study, numbers: list[int]) -> set[str]:
    trials = study.get_trials(deepcopy=False)
    return {t.user_attrs["mlflow_run_id"] for t in trials if t.number in numbers and "mlflow_run_id" in t.user_attrs}


def _wait_for_workers(spawn: Callable[[int, int, str], subprocess.Popen], quotas: list[int], parent_run_id: str,
                      log: Any) -> str:
    """Start one worker per quota and wait for all; returns the parent run's final MLflow status.

    Ctrl-C is passed on to the workers, which mark their running trials and stop."""
    if not quotas:
        return "FINISHED"
    log(f"starting {len(quotas)} worker processes with {', '.join(map(str, quotas))} trial(s) each")
    procs = [spawn(rank, quota, parent_run_id) for rank, quota in enumerate(quotas)]
    forwarded = False
    try:
        while any(p.poll() is None for p in procs):
            if interrupts.requested() and not forwarded:  # the first Ctrl-C: each worker stops at a safe point
                _signal_alive(procs)
                forwarded = True
            time.sleep(0.2)
    except KeyboardInterrupt:  # the second: the workers stop at once too
        _signal_alive(procs)
        for p in procs:
            p.wait()
        raise
    codes = [p.returncode for p in procs]
    interrupts.check()
    failed = [rank for rank, code in enumerate(codes) if code != 0]
    if failed:
        how = ", ".join(f"{rank} ({_exit_reason(codes[rank])})" for rank in failed)
        log(f"worker(s) {how} ended early; their finished trials are kept")
    return "FAILED" if failed else "FINISHED"


def _make_good(study: optuna.Study, storage: optuna.storages.RDBStorage, objective: Objective,
               after: Callable[[optuna.Study, optuna.trial.FrozenTrial], None], n_trials: int, log: Any) -> None:
    """After a worker died (or failed): fail and retry its trial once its heartbeat is stale, then run
    in this process the trials the study still lacks to hold ``n_trials`` (a retry first: Optuna runs
    WAITING trials before new ones, and the retry resumes from the dead trial's last checkpoint)."""
    stale = fail_stale_trials(study, storage, log=log)
    if stale.dead:
        log(f"marked trial(s) {', '.join(map(str, stale.dead))} of the dead worker(s) FAIL ({DEAD_WORKER_REASON}); "
            "each is retried from its last epoch checkpoint")
    missing = n_trials - len(counted_trials(study.get_trials(deepcopy=False))) - len(stale.alive)
    if missing > 0:
        log(f"running here the {missing} trial(s) the dead worker(s) left undone")
        study.optimize(objective, n_trials=missing, catch=(Exception,), callbacks=[after])


def _exit_reason(code: int) -> str:
    """``-9`` -> "killed by SIGKILL", ``2`` -> "exit code 2"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _signal_alive(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)


def run_worker(cfg: StudyConfig, name: str, stores: Stores | str | Path, parent_run_id: str, *,
               quota: int | None = None, target: int | None = None, rank: int | None = None,
               log: Any = print) -> int:
    """Run trials of the (already prepared) study ``name`` in this process; returns how many it ran.

    ``quota``: exactly that many trials (the workers ``run_study`` starts). ``target``: until the study
    holds that many (``counted_trials`` plus those running): workers that finish at the same moment may
    each start one more, so a study can overshoot its target by up to the number of workers, less one.
    ``rank`` numbers the workers ``run_study`` starts (their sampler seeds follow from it); a worker
    that joins from elsewhere (``rank`` None) draws from a seed of its host and process."""
    if (quota is None) == (target is None):
        raise ValueError("give a worker either a quota or a target")
    stores = Stores.of(stores)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(stores)
    study = load_existing_study(name, storage, stores)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    # each worker draws its own suggestions: the study's seed, shifted by rank (or host and process)
    shift = 7919 * (rank + 1) if rank is not None else zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    study.sampler = SAMPLERS.get(cfg.sampler.name)(cfg.sampler, (sampler_seed(cfg.sampler.seed, finished) + shift)
                                                   % 2**32)
    tag = f"worker {rank}" if rank is not None else f"{socket.gethostname()}:{os.getpid()}"
    if target is not None and _reached(study, target):
        log(f"[{tag}] study {name!r} already holds its {target} trial(s): nothing to run")
        return 0
    data = load_dataset(cfg.trainer.data)
    tracker = StudyTracker(stores, name, cfg.objective_names, cfg.directions)
    tracker.attach(parent_run_id)
    objective = Objective(cfg, data, stores.runs_dir / "studies" / name, tracker, progress=False)
    ran = 0

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        tracker.after_trial(study, trial)
        log(f"[{tag}] {_trial_line(trial, cfg.objective_names)}")
        if target is not None and _reached(study, target):
            study.stop()
        interrupts.check()

    with interrupts.deferred():
        study.optimize(objective, n_trials=quota, catch=(Exception,), callbacks=[after])
    return ran


def _reached(study: optuna.Study, target: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    return len(counted_trials(trials)) + sum(t.state == TrialState.RUNNING for t in trials) >= target


def join_study(name: str, stores: Stores | str | Path, trials: int | None = None, overrides: Sequence[str] = (),
               values: Mapping[str, Any] | None = None, log: Any = print) -> int:
    """``adprune worker``: join study ``name`` (started by ``run_study``, perhaps on another machine) with
    the config stored in it, ``overrides`` applied (e.g. this machine's ``data.root``); run ``trials``
    trials, or until the study holds its target. Returns how many trials this process ran."""
    stores = Stores.of(stores)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials: {trials} must be >= 1, or left out to run until the study holds its target")
    storage = optuna_storage(stores)
    check_tracking_reachable(stores)
    study = load_existing_study(name, storage, stores)
    attrs = study.user_attrs
    if SPEC_ATTR not in attrs or "mlflow_parent_run_id" not in attrs:
        raise ConfigError(f"study {name!r} holds no study config (it was started by an older adprune); "
                          "run make study for it once with this version, then join it")
    cfg = study_config_from_spec(attrs[SPEC_ATTR], overrides, values, source=f"study {name!r}")
    target = None if trials is not None else int(attrs[TARGET_ATTR])
    log(f"joined study {name!r} ({stores.describe()}): "
        + (f"{trials} trial(s)" if trials is not None else f"until it holds {target} trial(s)"))
    ran = run_worker(cfg, name, stores, attrs["mlflow_parent_run_id"], quota=trials, target=target, log=log)
    log(f"ran {ran} trial(s) of study {name!r}")
    return ran


def _warn_epochs(study: optuna.Study, cfg: StudyConfig, log: Any) -> None:
    base = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
    if base and base[-1].user_attrs.get("epochs") != cfg.trainer.train.epochs:
        log(f"note: the baseline ran {base[-1].user_attrs.get('epochs')} epochs, new trials run "
            f"{cfg.trainer.train.epochs}: their savings and accuracy drop are measured against it anyway")


def _trial_line(trial: Any, names: tuple[str, ...]) -> str:
    notes = ["baseline"] if trial.user_attrs.get("baseline") else []
    if trial.user_attrs.get("retry_of") is not None:
        resumed = trial.user_attrs.get("resumed_from_epoch")
        notes.append(f"retry of trial {trial.user_attrs['retry_of']}"
                     + (f", resumed after epoch {resumed}" if resumed else ""))
    tag = " (" + "; ".join(notes) + ")" if notes else ""
    head = f"trial {trial.number}{tag} {trial.state.name}"
    if trial.state == TrialState.COMPLETE:
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values))
        comp, drop = trial.user_attrs.get("compression_flops"), trial.user_attrs.get("accuracy_drop")
        infeasible = "" if all(v <= 0 for v in trial.constraints.values()) else \
            f"; infeasible: val_top1 {drop:.3f} below the baseline"
        return f"{head}: {values}" + (f", compression_flops {comp:.2f}x" if comp else "") + infeasible
    reason = trial.user_attrs.get("stop_reason") or trial.user_attrs.get("fail_reason") or ""
    return f"{head}: {reason}"


def format_report(report: StudyReport, names: tuple[str, ...]) -> str:
    """The command's closing summary: counts and the Pareto front as a small table."""
    states = [t["state"] for t in report.trials]
    retried = f", {len(report.retried)} of them retried after their worker died" if report.retried else ""
    lines = [f"study {report.name!r}: {len(states)} trials ({states.count('COMPLETE')} complete, "
             f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed{retried}); ran {report.ran} now",
             f"Pareto front ({len(report.pareto)}):",
             "  trial  " + "  ".join(f"{n:>15}" for n in names) + "  compression_flops  baseline"]
    for t in report.pareto:
        vals = "  ".join(f"{t['values'][n]:>15.4g}" for n in names)
        comp = t["compression_flops"]
        lines.append(f"  {t['number']:>5}  {vals}  {comp if comp is None else f'{comp:.2f}x':>17}  "
                     f"{'yes' if t['baseline'] else ''}")
    return "\n".join(lines)
