"""Run a study: stores, sampler, the baseline, resuming, the trial loop with a progress display.

- Stores, both embedded SQLite in one runtime folder (``runs/`` by default): Optuna's
  ``<runs>/optuna.db``, MLflow's ``<runs>/mlflow.db`` with artifacts under ``<runs>/mlartifacts/``;
  trainer output per trial under ``<runs>/studies/<study>/trial-NNNN/``.
- ``n_trials`` counts every trial of the study, the baseline and failed ones included: a new study
  runs ``n_trials``; the same name again resumes and adds ``n_trials - existing`` (none if already there).
- The first trial is the dense baseline (``prune.schedule=none``), enqueued with user attr
  ``baseline=True`` when the study has none that completed or is waiting.
- A resumed study reseeds its sampler with (seed, finished trials), so that a second session does
  not replay the first session's random suggestions; a fresh study uses the seed as is, so the same
  seed gives the same suggestions.
- Several worker processes may share one study (``workers`` > 1, ``adprune study --workers k`` or
  ``--gpus 0,1 --workers-per-gpu k``): this process prepares the study, each worker runs a fixed
  quota of trials against the same SQLite files (writers wait for each other's locks), and the
  total is exact. Trials left RUNNING by a killed process are marked FAIL when the study is next
  opened, so start a study's workers from one command.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from adprune_core.config import config_to_dict
from adprune_core.data import load_dataset
from adprune_core.errors import ConfigError
from study.objective import Objective
from study.pareto import describe_trial, pareto_trials
from study.samplers import SAMPLERS
from study.space import StudyConfig
from study.tracking import StudyTracker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def optuna_uri(runs_dir: str | Path) -> str:
    return f"sqlite:///{(Path(runs_dir) / 'optuna.db').resolve()}"


SQLITE_LOCK_TIMEOUT_S = 60


def optuna_storage(runs_dir: str | Path) -> optuna.storages.RDBStorage:
    """The study's SQLite storage; a writer waits up to a minute for another process's lock (several
    workers share one file) instead of failing with "database is locked"."""
    return optuna.storages.RDBStorage(optuna_uri(runs_dir),
                                      engine_kwargs={"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}})


@dataclass
class StudyReport:
    name: str
    existing: int  # finished trials before this session
    ran: int  # trials run in this session
    trials: list[dict[str, Any]]  # every trial, described
    pareto: list[dict[str, Any]]  # the Pareto front, described


def study_record(cfg: StudyConfig) -> dict[str, Any]:
    """The study config as plain data (logged with the parent run)."""
    return {"source": cfg.source, "objectives": dict(zip(cfg.objective_names, cfg.directions)),
            "sampler": vars(cfg.sampler), "max_accuracy_drop": cfg.max_accuracy_drop,
            "stopper": vars(cfg.stopper) if cfg.stopper else None,
            "space": {d.key: {k: v for k, v in vars(d).items() if k != "key" and v not in (None, (), False)}
                      for d in cfg.space},
            "trainer": config_to_dict(cfg.trainer)}


def open_study(cfg: StudyConfig, name: str, runs_dir: Path) -> optuna.Study:
    """Create or load study ``name``; check it optimises the same objectives."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=optuna_storage(runs_dir), study_name=name, directions=list(cfg.directions),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))
    stored = study.user_attrs.get("objectives")
    mine = [f"{n} ({d})" for n, d in zip(cfg.objective_names, cfg.directions)]
    have = [d.name.lower() for d in study.directions]
    if (stored is not None and stored != mine) or have != list(cfg.directions):
        raise ConfigError(f"study {name!r} in {runs_dir} optimises {stored or have}, not {mine}; "
                          "use another --name (or --runs-dir) for different objectives")
    if stored is None:
        study.set_user_attr("objectives", mine)
    return study


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark trials a killed process left RUNNING as FAIL; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "left running by an interrupted process")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


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


def run_study(cfg: StudyConfig, name: str, n_trials: int, runs_dir: str | Path, progress: bool = True,
              log: Any = print, workers: int = 1,
              spawn: Callable[[int, int, str], subprocess.Popen] | None = None) -> StudyReport:
    """Run (or resume) study ``name`` until it holds ``n_trials`` trials; see the module docstring.

    With ``workers`` > 1 this process prepares the study (stale trials, the baseline, the MLflow
    parent run) and ``spawn(rank, quota, parent_run_id)`` starts each worker process, which runs
    ``run_worker`` for its fixed quota of trials: the total is exact, with no race between workers."""
    if n_trials < 1:
        raise ConfigError(f"--trials: {n_trials} must be >= 1 (the baseline counts as one)")
    runs_dir = Path(runs_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = open_study(cfg, name, runs_dir)
    stale = fail_stale_trials(study)
    if stale:
        log(f"marked {stale} trial(s) left running by an interrupted process as FAIL")
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    study.sampler = SAMPLERS.get(cfg.sampler.name)(cfg.sampler, sampler_seed(cfg.sampler.seed, finished))
    to_run = max(0, n_trials - finished)
    data = load_dataset(cfg.trainer.data) if to_run else None  # a data error ends the command before any trial
    if to_run and enqueue_baseline(study):
        log("enqueued the dense baseline (prune.schedule=none) as the first trial" if finished == 0 else
            "re-enqueued the dense baseline (no completed baseline in the study)")
    _warn_epochs(study, cfg, log)
    if finished:
        log(f"resuming study {name!r}: {finished} trial(s) done; "
            + (f"adding {to_run} to reach {n_trials}" if to_run else f"already >= {n_trials}, nothing to run"))
    else:
        log(f"new study {name!r}: {to_run} trial(s), the baseline included")

    if data is not None:
        tracker = StudyTracker(runs_dir, name, cfg.objective_names, cfg.directions)
        tracker.open(study, study_record(cfg))
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

        status = "FAILED"
        try:
            if workers > 1:
                if spawn is None:
                    raise ValueError("several workers need a spawn function")
                # The baseline runs here, alone and first: the workers' constraints and stopper compare with it.
                here = 1 if _baseline_waiting(study) else 0
                study.optimize(objective, n_trials=here, catch=(Exception,), callbacks=[after])
                bar.close()
                status = _wait_for_workers(spawn, split_quotas(to_run - here, workers), tracker.parent_id, log)
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
    return StudyReport(name=name, existing=finished, ran=ran,
                       trials=[describe_trial(t, cfg.objective_names) for t in trials],
                       pareto=[describe_trial(t, cfg.objective_names) for t in pareto_trials(trials, cfg.directions)])


def _wait_for_workers(spawn: Callable[[int, int, str], subprocess.Popen], quotas: list[int], parent_run_id: str,
                      log: Any) -> str:
    """Start one worker per quota and wait for all; returns the parent run's final MLflow status.

    Ctrl-C is passed on to the workers, which mark their running trials and stop."""
    if not quotas:
        return "FINISHED"
    log(f"starting {len(quotas)} worker processes with {', '.join(map(str, quotas))} trial(s) each")
    procs = [spawn(rank, quota, parent_run_id) for rank, quota in enumerate(quotas)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    failed = [rank for rank, code in enumerate(codes) if code != 0]
    if failed:
        log(f"worker(s) {', '.join(map(str, failed))} exited with an error; their finished trials are kept")
    return "FAILED" if failed else "FINISHED"


def run_worker(cfg: StudyConfig, name: str, quota: int, runs_dir: str | Path, rank: int, parent_run_id: str,
               log: Any = print) -> None:
    """One worker process of a multi-worker study: ``quota`` trials of the (already prepared) study."""
    runs_dir = Path(runs_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=optuna_storage(runs_dir))
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    # each worker draws its own suggestions: same seed, shifted by rank
    study.sampler = SAMPLERS.get(cfg.sampler.name)(
        cfg.sampler, (sampler_seed(cfg.sampler.seed, finished) + 7919 * (rank + 1)) % 2**32)
    data = load_dataset(cfg.trainer.data)
    tracker = StudyTracker(runs_dir, name, cfg.objective_names, cfg.directions)
    tracker.attach(parent_run_id)
    objective = Objective(cfg, data, runs_dir / "studies" / name, tracker, progress=False)

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tracker.after_trial(study, trial)
        log(f"[worker {rank}] {_trial_line(trial, cfg.objective_names)}")

    study.optimize(objective, n_trials=quota, catch=(Exception,), callbacks=[after])


def _warn_epochs(study: optuna.Study, cfg: StudyConfig, log: Any) -> None:
    base = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
    if base and base[-1].user_attrs.get("epochs") != cfg.trainer.train.epochs:
        log(f"note: the baseline ran {base[-1].user_attrs.get('epochs')} epochs, new trials run "
            f"{cfg.trainer.train.epochs}: their savings and accuracy drop are measured against it anyway")


def _trial_line(trial: Any, names: tuple[str, ...]) -> str:
    head = f"trial {trial.number}{' (baseline)' if trial.user_attrs.get('baseline') else ''} {trial.state.name}"
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
    lines = [f"study {report.name!r}: {len(states)} trials ({states.count('COMPLETE')} complete, "
             f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed); ran {report.ran} now",
             f"Pareto front ({len(report.pareto)}):",
             "  trial  " + "  ".join(f"{n:>15}" for n in names) + "  compression_flops  baseline"]
    for t in report.pareto:
        vals = "  ".join(f"{t['values'][n]:>15.4g}" for n in names)
        comp = t["compression_flops"]
        lines.append(f"  {t['number']:>5}  {vals}  {comp if comp is None else f'{comp:.2f}x':>17}  "
                     f"{'yes' if t['baseline'] else ''}")
    return "\n".join(lines)
