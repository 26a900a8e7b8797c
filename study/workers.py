"""Worker processes sharing one study: every process runs ``study.optimize`` until the study holds its target.

One mechanism, as in Optuna's "distributed optimization" tutorial (one storage, N processes): each
process, started by ``make study WORKERS=k`` or joined from any machine (``make worker``), runs
``optimize_until_target``: ``study.optimize`` with ``StopAtTarget`` (the shape of Optuna's
``MaxTrialsCallback``) and the target of the last ``run_study`` (``TARGET_ATTR``). No process has a
quota; the study's count decides.

- ``run_study`` with ``workers`` > 1 (``adprune study --workers k`` or ``--gpus 0,1 --workers-per-gpu
  k``) prepares the study and runs the baseline itself (the others compare with it), starts one process
  per worker (``run_worker``), waits for them, then runs until the target like them: usually nothing is
  left; after a worker died, its trial is failed once its heartbeat is stale (``fail_stale_trials``) and
  its retry (``study.retries``) runs in whichever process starts a trial next, this one at the latest.
- ``join_study`` (``adprune worker``) joins a running study from any machine that reaches its stores,
  with the config stored in the study, until the study holds its target (or for a given count,
  ``--trials N``: N trials here, whatever the target, as ``optimize(n_trials=N)``).
- Exact totals: a process stops after a trial once the study holds its target, the running trials
  counted (``target_reached``), and does not start when it already does. Two processes that finish at
  the same moment may both find the study one trial short and both start one; each checks when its trial
  starts (``held_before``: the lower trial number goes first), and the surplus one ends at once, not run:
  FAIL with ``fail_reason`` ``TARGET_HELD_REASON``, no MLflow run, not counted (``counted_trials``), one
  line in the log. So the study ends with exactly its target of trials that ran.
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
from study.tracking import StudyTracker, parent_run_id
from study.trial_record import TrialRecord, set_attrs
from study.trials import (
    SPEC_ATTR,
    TARGET_ATTR,
    TARGET_HELD_REASON,
    TargetHeld,
    held_before,
    load_existing_study,
    optuna_storage,
    target_reached,
    trial_line,
    trials_dir,
    was_run,
)

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


class StopAtTarget:
    """``study.optimize`` callback: stop once the study holds ``n_trials`` trials (``target_reached``).

    The shape of Optuna's ``MaxTrialsCallback(n_trials, states)``, which counts the trials in the given
    states. It cannot express this target: a FAIL trial counts unless a retry replaced it (its worker
    died, or Ctrl-C ended it) or it was not run (``TARGET_HELD_REASON``), which no set of states says
    (``counted_trials``); and RUNNING trials count too, or k processes would overshoot by k (optuna#3518).
    ``skip_surplus`` adds the check at trial start that makes the total exact."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if target_reached(study, self.n_trials):
            study.stop()

    def skip_surplus(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """``objective``, run only when the trial has a place in the target (``held_before``); else the
        trial ends FAIL with ``fail_reason`` ``TARGET_HELD_REASON`` (not counted) and the process stops."""

        def run(trial: optuna.Trial) -> Any:
            if held_before(trial.study.get_trials(deepcopy=False), trial.number) >= self.n_trials:
                set_attrs(trial, TrialRecord(fail_reason=TARGET_HELD_REASON))
                trial.study.stop()
                raise TargetHeld(f"trial {trial.number}: {TARGET_HELD_REASON}")
            return objective(trial)

        return run


def optimize_until_target(study: optuna.Study, objective: Callable[[optuna.Trial], Any], target: int | None,
                          after: Callback, n_trials: int | None = None, log: Any = print) -> None:
    """Run trials of ``study`` in this process until it holds ``target`` trials (see the module docstring);
    ``after(study, trial)`` follows each trial that ran. ``n_trials``: at most that many here (None: no
    limit; with ``target`` None, exactly that many). Nothing runs when the study already holds its target
    (optuna#3518: a ``MaxTrialsCallback`` process adds a trial to a full study). Trials that raise are
    recorded FAIL and the loop goes on (``catch``); Ctrl-C is for ``after`` and the objective to handle
    (``interrupts``)."""
    if target is None and n_trials is None:
        raise ValueError("give optimize_until_target a target, a number of trials or both")
    if target is not None and target_reached(study, target):  # Optuna's callbacks come after a trial only
        return

    def after_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if was_run(trial):
            after(study, trial)
        else:
            log(f"trial {trial.number} {TARGET_HELD_REASON} (another process started one at the same moment)")

    callbacks: list[Callback] = [after_run]
    if target is not None:
        stop = StopAtTarget(target)
        objective = stop.skip_surplus(objective)
        callbacks.insert(0, stop)
    study.optimize(objective, n_trials=n_trials, catch=(Exception,), callbacks=callbacks)


def wait_for_workers(spawn: Callable[[int, str], subprocess.Popen], workers: int, parent_run_id: str,
                     log: Any) -> list[int]:
    """Start ``workers`` worker processes (``spawn(rank, parent_run_id)``) and wait for all; returns the
    ranks of those that ended early (killed, or an error).

    Ctrl-C is passed on to the workers, which mark their running trials and stop."""
    log(f"starting {workers} worker processes, each running trials until the study holds its target")
    procs = [spawn(rank, parent_run_id) for rank in range(workers)]
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
    return failed


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
               trials: int | None = None, rank: int | None = None, log: Any = print,
               study: optuna.Study | None = None, snapshots: str | Path | None = None) -> int:
    """Run trials of the (already prepared) study ``name`` in this process until it holds its target
    (``TARGET_ATTR``, ``optimize_until_target``); returns how many it ran.

    ``trials``: instead, run that many here, whatever the target (``adprune worker --trials N``).
    ``rank`` numbers the workers ``run_study`` starts (for their log lines). Every trial draws its
    suggestions from the study's seed and its own number (``study.samplers.TrialSeededSampler``), so no
    two workers draw alike. ``study``: the study already loaded from ``stores`` (default: load it).
    ``snapshots``: the snapshot folder of shared prefixes (default ``<runs>/snapshots``)."""
    stores = Stores.of(stores)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study is None:
        study = load_existing_study(name, optuna_storage(stores), stores)
    target = None if trials is not None else int(study.user_attrs[TARGET_ATTR])
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
        interrupts.check()

    with interrupts.deferred():
        optimize_until_target(study, objective, target, after, n_trials=trials, log=lambda line: log(f"[{tag}] {line}"))
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
    parent = parent_run_id(study)
    if SPEC_ATTR not in attrs or parent is None:
        raise ConfigError(f"study {name!r} holds no study config (it was started by an older adprune); "
                          "run make study for it once with this version, then join it")
    cfg = study_config_from_spec(attrs[SPEC_ATTR], overrides, values, source=f"study {name!r}")
    changed = split_change(attrs[SPEC_ATTR], cfg.trainer)
    if changed:
        raise ConfigError(f"--set: {changed} would score this worker's trials on another validation split than "
                          f"study {name!r}'s; leave the data keys that choose it ({', '.join(SPLIT_KEYS)}) alone")
    log(f"joined study {name!r} ({stores.describe()}): "
        + (f"{trials} trial(s)" if trials is not None else f"until it holds {attrs[TARGET_ATTR]} trial(s)"))
    ran = run_worker(cfg, name, stores, parent, trials=trials, log=log, study=study,
                     snapshots=snapshots)
    log(f"ran {ran} trial(s) of study {name!r}")
    return ran
