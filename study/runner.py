"""Run a study: the stores, the sampler, the baseline, resuming, the trial loop with a progress display.

- Stores (``study.stores``): embedded SQLite in one runtime folder by default (``runs/``: Optuna's
  ``<runs>/optuna.db``, MLflow's ``<runs>/mlflow.db`` with artifacts under ``<runs>/mlartifacts/``),
  or PostgreSQL and an MLflow tracking server; trainer output per trial under
  ``<runs>/studies/<study>/<key>/trial-NNNN/`` (``study.trials.trials_dir``: unique per study instance).
- A new study runs ``n_trials`` (``study.trials.counted_trials``); the same name again resumes and
  adds ``n_trials - existing`` (none if already there; a study without a complete trial says so and
  runs nothing). The first trial is the dense baseline.
- Trial n draws from a sampler seeded with (seed, n) (``study.samplers.TrialSeededSampler``): the same
  seed gives the same suggestions, a resumed session never replays an earlier one's, and sessions or
  workers that share a study never draw alike.
- Before the first write the session checks the name, the sampler, the data and the stores; the
  stores and the study are created and prepared under the runs folder's lock (``study.stores.stores_lock``),
  so that sessions started together take turns.
- Several processes may share one study (``study.workers``): each, this one included, runs trials
  until the study holds its target; stale trials, heartbeats and retries are ``study.trials``'.
- Shared prefixes (``study.sharing``): trials fork from epoch snapshots in ``<runs>/snapshots/`` (or
  ``snapshot_dir``) unless the study's ``share.enabled`` is false; the closing summary says what that saved.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from adprune_core import interrupts
from adprune_core.config import config_to_dict
from adprune_core.data import load_dataset
from adprune_core.errors import ConfigError
from study.objective import Objective, retry_history
from study.pareto import completed_baseline, describe_trial
from study.retries import quiet_interrupted_trials
from study.samplers import build_sampler
from study.sharing import SharingTotals, sharing_text, sharing_totals, snapshot_dir
from study.space import StudyConfig, prune_window_note
from study.stores import (
    Stores,
    check_study_name,
    check_tracking_reachable,
    empty_store_files,
    sqlite_path,
    stores_lock,
)
from study.tracking import StudyTracker
from study.trial_record import TrialRecord
from study.trials import (
    DEAD_WORKER_REASON,
    FINISHED,
    MAX_RETRY,
    SPEC_ATTR,
    TARGET_ATTR,
    baseline_waiting,
    counted_trials,
    enqueue_baseline,
    fail_stale_trials,
    open_study,
    optuna_storage,
    trial_line,
    trials_dir,
    was_run,
)
from study.workers import optimize_until_target, wait_for_workers


@dataclass
class SessionOutcome:
    """What one ``run_study``/``join_study`` session did, for the closing summary and the tests."""

    name: str
    existing: int  # counted trials before this session (see ``counted_trials``)
    ran: int  # trials run in this session
    trials: list[dict[str, Any]]  # every trial, described
    pareto: list[dict[str, Any]]  # the Pareto front, described
    retried: list[int] = field(default_factory=list)  # FAIL trials whose worker died and that were retried
    sharing: SharingTotals | None = None  # what shared prefixes saved over the study's finished trials
    not_run: list[int] = field(default_factory=list)  # FAIL trials started past the target (``was_run``)


def study_record(cfg: StudyConfig) -> dict[str, Any]:
    """The study config as plain data (logged with the parent run)."""
    return {"source": cfg.source, "objectives": dict(zip(cfg.objective_names, cfg.directions)),
            "sampler": vars(cfg.sampler), "max_accuracy_drop": cfg.max_accuracy_drop,
            "stopper": vars(cfg.stopper) if cfg.stopper else None, "share": vars(cfg.share),
            "space": {d.key: {k: v for k, v in vars(d).items() if k != "key" and v not in (None, (), False)}
                      for d in cfg.space},
            "trainer": config_to_dict(cfg.trainer)}


def run_study(cfg: StudyConfig, name: str, n_trials: int, stores: Stores | str | Path, progress: bool = True,
              log: Any = print, workers: int = 1,
              spawn: Callable[[int, str], subprocess.Popen] | None = None,
              snapshots: str | Path | None = None) -> SessionOutcome:
    """Run (or resume) study ``name`` until it holds ``n_trials`` trials; see the module docstring.

    ``stores``: where the study lives (``study.stores.Stores``; a runtime folder means its embedded
    SQLite stores). With ``workers`` > 1 this process prepares the study (stale trials, the baseline,
    the MLflow parent run), ``spawn(rank, parent_run_id)`` starts each worker process, which runs
    ``run_worker`` until the study holds ``n_trials``, and after them this process does the same
    (``study.workers``: the total is exact). The study's config and ``n_trials`` are stored with it, for
    the workers and for those that join it (``join_study``).
    ``snapshots``: the snapshot folder of shared prefixes (default ``<runs>/snapshots``)."""
    if n_trials < 1:
        raise ConfigError(f"--trials: {n_trials} must be >= 1 (the baseline counts as one)")
    check_study_name(name)
    stores = Stores.of(stores)
    runs_dir = stores.runs_dir
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # (the "optuna" logger's level)
    quiet_interrupted_trials()
    # Everything that can be refused is checked before the first write: the sampler, the data, the stores.
    sampler = build_sampler(cfg.sampler)
    data = load_dataset(cfg.trainer.data)
    check_tracking_reachable(stores)
    # a database server is reached before anything is written here; a SQLite file is created under the lock
    server = optuna_storage(stores) if sqlite_path(stores.optuna_url) is None else None
    with stores_lock(runs_dir):  # one process of this machine at a time creates the stores and the study
        empty = empty_store_files(stores)
        storage = server or optuna_storage(stores)
        study = open_study(cfg, name, stores, storage)
        tracker = StudyTracker(stores, name, cfg.objective_names, cfg.directions)
    for path in empty:
        log(f"WARNING: the store file {path} was empty (0 bytes): whatever it held is gone (restore it from a "
            "backup if it held studies); a new, empty store was made in it. Earlier trial folders are kept: "
            "this study writes into a folder of its own")
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
    counted = counted_trials(trials)
    finished = len(counted)
    study.sampler = sampler
    to_run = max(0, n_trials - finished)
    with stores_lock(runs_dir):
        study.set_user_attr(SPEC_ATTR, json.loads(cfg.spec))
        study.set_user_attr(TARGET_ATTR, n_trials)
        if to_run and enqueue_baseline(study):
            log("enqueued the dense baseline (prune.schedule=none) as the first trial" if not trials else
                "re-enqueued the dense baseline (no completed baseline in the study)")
        if to_run:
            tracker.open(study, study_record(cfg))
    _warn_epochs(trials, cfg, log)
    if not trials:
        log(f"new study {name!r}: {to_run} trial(s), the baseline included")
    elif to_run:
        log(f"resuming study {name!r}: {finished} trial(s) done; adding {to_run} to reach {n_trials}")
    elif any(t.state == TrialState.COMPLETE for t in counted):
        log(f"resuming study {name!r}: {finished} trial(s) done; already >= {n_trials}, nothing to run")
    else:
        log(f"study {name!r} holds {finished} trial(s) and none of them completed ({_state_counts(counted)}); "
            f"nothing was run: fix why they failed (make report, or the trials' fail_reason), then run more with "
            f"a higher target (make study TRIALS={finished + 1} or more)")
    note = prune_window_note(cfg) if to_run else None
    if note:
        log(note)

    if to_run:
        objective = Objective(cfg, data, trials_dir(study, runs_dir), tracker, progress=progress,
                              snapshot_dir=snapshot_dir(runs_dir, snapshots))
        bar = tqdm(total=to_run, unit="trial", desc=f"study {name}", disable=not progress, dynamic_ncols=True,
                   position=0)

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            shared = tracker.after_trial(study, trial)
            line = trial_line(trial, cfg.objective_names)
            if progress:
                bar.write(line)
                if shared.forked:  # the progress line: what shared prefixes saved so far
                    bar.set_postfix_str(f"shared prefixes: {shared.compute_ratio:.2f}x less compute, "
                                        f"{shared.reused_seconds:.0f} s saved", refresh=False)
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
                    if baseline_waiting(study):
                        optimize_until_target(study, objective, n_trials, after, n_trials=1, log=log)
                    bar.close()
                    if wait_for_workers(spawn, workers, tracker.parent_id, log):
                        # a worker died: its trial's heartbeat goes stale, the trial FAIL, a retry WAITING
                        stale = fail_stale_trials(study, storage, log=log)
                        if stale.dead:
                            log(f"marked trial(s) {', '.join(map(str, stale.dead))} of the dead worker(s) FAIL "
                                f"({DEAD_WORKER_REASON}); each is retried from its last epoch checkpoint")
                # this process runs until the target too (after its workers: what they left, e.g. a dead one's retry)
                optimize_until_target(study, objective, n_trials, after, log=log)
                status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                bar.close()
                tracker.close(status)

    return _report(study, cfg, name, finished, to_run)


def _report(study: optuna.Study, cfg: StudyConfig, name: str, finished: int, ran: int) -> SessionOutcome:
    trials = study.get_trials(deepcopy=False)
    retried = sorted({n for t in trials for n in retry_history(t)})
    return SessionOutcome(name=name, existing=finished, ran=ran,
                       trials=[describe_trial(t, cfg.objective_names) for t in trials],
                       pareto=[describe_trial(t, cfg.objective_names) for t in study.best_trials],
                       retried=retried, sharing=sharing_totals(t for t in trials if t.state in FINISHED),
                       not_run=[t.number for t in trials if not was_run(t)])


def _state_counts(trials: list[optuna.trial.FrozenTrial]) -> str:
    states = [t.state.name for t in trials]
    return ", ".join(f"{states.count(s)} {word}" for s, word in (("COMPLETE", "complete"), ("PRUNED", "pruned"),
                                                                  ("FAIL", "failed")) if s in states)


def _warn_epochs(trials: list[optuna.trial.FrozenTrial], cfg: StudyConfig, log: Any) -> None:
    base = completed_baseline(trials)
    epochs = TrialRecord.from_trial(base).epochs if base is not None else None
    if base is not None and epochs != cfg.trainer.train.epochs:
        log(f"note: the baseline ran {epochs} epochs, new trials run "
            f"{cfg.trainer.train.epochs}: their savings and accuracy drop are measured against it anyway")


def format_report(report: SessionOutcome, names: tuple[str, ...]) -> str:
    """The command's closing summary: counts and the Pareto front as a small table."""
    states = [t["state"] for t in report.trials]
    retried = f", {len(report.retried)} of them retried after their worker died" if report.retried else ""
    not_run = (f", {len(report.not_run)} not run (started when the study already held its target)"
               if report.not_run else "")
    failed = states.count("FAIL") - len(report.not_run)
    lines = [f"study {report.name!r}: {len(states)} trials ({states.count('COMPLETE')} complete, "
             f"{states.count('PRUNED')} pruned, {failed} failed{retried}{not_run}); ran {report.ran} now",
             *([sharing_text(report.sharing)] if report.sharing and report.sharing.trials else []),
             f"Pareto front ({len(report.pareto)}):",
             "  trial  " + "  ".join(f"{n:>15}" for n in names) + "  compression_flops  baseline"]
    for t in report.pareto:
        vals = "  ".join(f"{t['values'][n]:>15.4g}" for n in names)
        comp = t["compression_flops"]
        lines.append(f"  {t['number']:>5}  {vals}  {'-' if comp is None else f'{comp:.2f}x':>17}  "
                     f"{'yes' if t['baseline'] else ''}")
    return "\n".join(lines)
