"""Run a study: the stores, the sampler, the baseline, resuming, the trial loop with a progress display.

- Stores (``study.stores``): embedded SQLite in one runtime folder by default (``runs/``: Optuna's
  ``<runs>/optuna.db``, MLflow's ``<runs>/mlflow.db`` with artifacts under ``<runs>/mlartifacts/``),
  or PostgreSQL and an MLflow tracking server; trainer output per trial under
  ``<runs>/studies/<study>/trial-NNNN/``.
- A new study runs ``n_trials`` (``study.trials.counted_trials``); the same name again resumes and
  adds ``n_trials - existing`` (none if already there). The first trial is the dense baseline.
- A resumed study reseeds its sampler with (seed, finished trials), so that a second session does
  not replay the first session's random suggestions; a fresh study uses the seed as is, so the same
  seed gives the same suggestions.
- Several worker processes may share one study (``study.workers``); stale trials, heartbeats and
  retries are ``study.trials``'.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from adprune_core import interrupts
from adprune_core.config import config_to_dict
from adprune_core.data import load_dataset
from adprune_core.errors import ConfigError
from study.objective import Objective, retry_history
from study.pareto import completed_baseline, describe_trial, pareto_trials
from study.samplers import SAMPLERS
from study.space import StudyConfig, prune_window_note
from study.stores import Stores, check_tracking_reachable
from study.tracking import StudyTracker
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
    sampler_seed,
    target_reached,
    trial_line,
)
from study.workers import make_good, split_quotas, wait_for_workers


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # (the "optuna" logger's level)
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
    _warn_epochs(trials, cfg, log)
    if trials:
        log(f"resuming study {name!r}: {finished} trial(s) done; "
            + (f"adding {to_run} to reach {n_trials}" if to_run else f"already >= {n_trials}, nothing to run"))
    else:
        log(f"new study {name!r}: {to_run} trial(s), the baseline included")
    note = prune_window_note(cfg) if to_run else None
    if note:
        log(note)

    if data is not None:
        tracker = StudyTracker(stores, name, cfg.objective_names, cfg.directions)
        tracker.open(study, study_record(cfg), alive_run_ids=_run_ids(trials, stale.alive))
        objective = Objective(cfg, data, runs_dir / "studies" / name, tracker, progress=progress)
        bar = tqdm(total=to_run, unit="trial", desc=f"study {name}", disable=not progress, dynamic_ncols=True,
                   position=0)

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            tracker.after_trial(study, trial)
            line = trial_line(trial, cfg.objective_names)
            if progress:
                bar.write(line)
            else:
                log(line)
            bar.update(1)
            if target_reached(study, n_trials):  # workers that joined from elsewhere did the rest
                study.stop()
            interrupts.check()  # between two trials: a Ctrl-C stops here, the finished trial recorded

        status = "FAILED"
        with interrupts.deferred():  # the first Ctrl-C stops at a safe point: after a step, between trials
            try:
                if workers > 1:
                    if spawn is None:
                        raise ValueError("several workers need a spawn function")
                    # The baseline runs here, alone and first: the workers' constraints and stopper compare with it.
                    here = 1 if baseline_waiting(study) else 0
                    study.optimize(objective, n_trials=here, catch=(Exception,), callbacks=[after])
                    bar.close()
                    status = wait_for_workers(spawn, split_quotas(to_run - here, workers), tracker.parent_id, log)
                    if status == "FAILED":  # a worker died: its share of the study is done here, nothing is lost
                        make_good(study, storage, objective, after, n_trials, log)
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


def _run_ids(trials: list[optuna.trial.FrozenTrial], numbers: list[int]) -> set[str]:
    return {t.user_attrs["mlflow_run_id"] for t in trials if t.number in numbers and "mlflow_run_id" in t.user_attrs}


def _warn_epochs(trials: list[optuna.trial.FrozenTrial], cfg: StudyConfig, log: Any) -> None:
    base = completed_baseline(trials)
    if base is not None and base.user_attrs.get("epochs") != cfg.trainer.train.epochs:
        log(f"note: the baseline ran {base.user_attrs.get('epochs')} epochs, new trials run "
            f"{cfg.trainer.train.epochs}: their savings and accuracy drop are measured against it anyway")


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
