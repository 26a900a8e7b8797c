"""Worker processes sharing one study.

- ``run_study`` with ``workers`` > 1 (``adprune study --workers k`` or ``--gpus 0,1 --workers-per-gpu
  k``) prepares the study and runs the baseline itself, then starts one process per worker, each
  running ``run_worker`` for a fixed quota of the remaining trials against the same stores: the total
  is exact. A worker that dies is made good by ``finish_after_dead_workers``: its trial is failed and retried, and
  what it left undone runs in the starting process.
- ``join_study`` (``adprune worker``) joins a running study from any machine that reaches its stores,
  with the config stored in the study, until the study holds its target (or for a given count).
- Ctrl-C: workers run in their own session; the starting process passes the first Ctrl-C on once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from adprune_core import interrupts
from adprune_core.data import load_dataset
from adprune_core.errors import ConfigError
from study.objective import Objective, worker_id
from study.retries import quiet_interrupted_trials
from study.samplers import build_sampler
from study.sharing import snapshot_dir
from study.space import SPLIT_KEYS, StudyConfig, split_change, study_config_from_spec
from study.stores import Stores, check_study_name, check_tracking_reachable, sqlite_path
from study.tracking import StudyTracker
from study.trials import (
    DEAD_WORKER_REASON,
    SPEC_ATTR,
    TARGET_ATTR,
    counted_trials,
    fail_stale_trials,
    load_existing_study,
    optuna_storage,
    target_reached,
    trial_line,
    trials_dir,
)


def split_quotas(trials: int, workers: int) -> list[int]:
    """Trials per worker: ``trials`` shared as evenly as possible, no worker given none."""
    base, extra = divmod(trials, workers)
    return [q for q in (base + (1 if r < extra else 0) for r in range(workers)) if q > 0]


def wait_for_workers(spawn: Callable[[int, int, str], subprocess.Popen], quotas: list[int], parent_run_id: str,
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


def finish_after_dead_workers(study: optuna.Study, storage: optuna.storages.RDBStorage, objective: Objective,
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
               log: Any = print, study: optuna.Study | None = None, snapshots: str | Path | None = None) -> int:
    """Run trials of the (already prepared) study ``name`` in this process; returns how many it ran.

    ``quota``: at most that many trials. ``target``: until the study holds that many
    (``target_reached``); workers that finish at the same moment may each start one more, so joined
    workers can overshoot a target by up to their number, less one. ``rank`` numbers the workers
    ``run_study`` starts: they run their quota, and stop early at the study's target (``TARGET_ATTR``)
    when workers that joined from elsewhere did part of it. Every trial draws its suggestions from the
    study's seed and its own number (``study.samplers.TrialSeededSampler``), so no two workers draw alike.
    ``study``: the study already loaded from ``stores`` (default: load it). ``snapshots``: the snapshot
    folder of shared prefixes (default ``<runs>/snapshots``)."""
    if quota is None and target is None:
        raise ValueError("give a worker a quota, a target or both")
    stores = Stores.of(stores)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study is None:
        study = load_existing_study(name, optuna_storage(stores), stores)
    if rank is not None and target is None:
        target = study.user_attrs.get(TARGET_ATTR)
    study.sampler = build_sampler(cfg.sampler)  # seeded per trial number: no two processes draw the same
    quiet_interrupted_trials()
    tag = f"worker {rank}" if rank is not None else worker_id()
    if target is not None and target_reached(study, target):
        log(f"[{tag}] study {name!r} already holds its {target} trial(s): nothing to run")
        return 0
    data = load_dataset(cfg.trainer.data)
    tracker = StudyTracker(stores, name, cfg.objective_names, cfg.directions)
    tracker.attach(parent_run_id)
    objective = Objective(cfg, data, trials_dir(study, stores.runs_dir), tracker, progress=False,
                          snapshot_dir=snapshot_dir(stores.runs_dir, snapshots))
    ran = 0

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        tracker.after_trial(study, trial)
        log(f"[{tag}] {trial_line(trial, cfg.objective_names)}")
        if target is not None and target_reached(study, target):
            study.stop()
        interrupts.check()

    with interrupts.deferred():
        study.optimize(objective, n_trials=quota, catch=(Exception,), callbacks=[after])
    return ran


def join_study(name: str, stores: Stores | str | Path, trials: int | None = None, overrides: Sequence[str] = (),
               values: Mapping[str, Any] | None = None, log: Any = print, snapshots: str | Path | None = None) -> int:
    """``adprune worker``: join study ``name`` (started by ``run_study``, perhaps on another machine) with
    the config stored in it, ``overrides`` applied (e.g. this machine's ``data.root``); run ``trials``
    trials, or until the study holds its target. Returns how many trials this process ran."""
    stores = Stores.of(stores)
    check_study_name(name, "--study")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials: {trials} must be >= 1, or left out to run until the study holds its target")
    path = sqlite_path(stores.optuna_url)
    if path is not None and not path.is_file():  # opening it would create an empty store
        raise ConfigError(f"--study: no Optuna storage at {path} to join study {name!r} from; pass the study's "
                          "storage (--storage URL, make worker STORAGE=...) or its runs folder (--runs-dir)")
    storage = optuna_storage(stores)
    check_tracking_reachable(stores)
    study = load_existing_study(name, storage, stores)
    attrs = study.user_attrs
    if SPEC_ATTR not in attrs or "mlflow_parent_run_id" not in attrs:
        raise ConfigError(f"study {name!r} holds no study config (it was started by an older adprune); "
                          "run make study for it once with this version, then join it")
    cfg = study_config_from_spec(attrs[SPEC_ATTR], overrides, values, source=f"study {name!r}")
    changed = split_change(attrs[SPEC_ATTR], cfg.trainer)
    if changed:
        raise ConfigError(f"--set: {changed} would score this worker's trials on another validation split than "
                          f"study {name!r}'s; leave the data keys that choose it ({', '.join(SPLIT_KEYS)}) alone")
    target = None if trials is not None else int(attrs[TARGET_ATTR])
    log(f"joined study {name!r} ({stores.describe()}): "
        + (f"{trials} trial(s)" if trials is not None else f"until it holds {target} trial(s)"))
    ran = run_worker(cfg, name, stores, attrs["mlflow_parent_run_id"], quota=trials, target=target, log=log,
                     study=study, snapshots=snapshots)
    log(f"ran {ran} trial(s) of study {name!r}")
    return ran
