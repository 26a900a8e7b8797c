"""One trial: suggested params -> trainer config -> ``adprune_core.trainer.train`` with callbacks -> values.

The trial's values are the final metrics named by the study's objectives. What ends how:

- completed run: state COMPLETE, values returned; with ``constraints.max_accuracy_drop`` the trial
  sets the constraint ``accuracy_drop`` = (baseline val_top1 - val_top1) - max_accuracy_drop
  (feasible when <= 0; Optuna's samplers and our Pareto front respect it); a searched trial that ended
  without a single cut sets ``never_pruned`` (user attr, MLflow tag ``adprune.never_pruned``) and the
  constraint ``never_pruned`` = 1 (infeasible): it trained the dense baseline's network again, so it is
  no point of the front, and the sampler learns to avoid it;
- stopped by the dominated-trial stopper: ``optuna.TrialPruned`` -> state PRUNED;
- diverged (loss not finite): state FAIL with the reason. A diverged run has no meaningful end
  point: its partial ``train_flops_cum`` would put it on the Pareto front for nothing;
- an exception: state FAIL with the error recorded; the study goes on (``optimize(catch=...)``);
- Ctrl-C: state FAIL with ``fail_reason`` "interrupted", and a WAITING retry is enqueued
  (``study.retries``); the command ends.

Checkpoints and retries: the trainer checkpoints every epoch into ``<out_dir>/checkpoint/``. A trial
that retries one whose worker died or that Ctrl-C ended (``study.retries.enqueue_retry``) gets its own
MLflow run, copies that trial's last checkpoint into its own folder and resumes from it:
the finished epochs are not recomputed, their records come from the checkpoint (and are logged to
the retry's MLflow run too). It records ``retry_of`` (the trial it continues) and, when it resumed,
``resumed_from_epoch``; a checkpoint of another config (``EPOCHS`` changed between sessions) or one that
cannot be read (a truncated file) is not resumed (``resume_skipped`` says why) and the retry starts
from scratch. A trial never writes into a folder that already holds files (``_check_unused``).

Shared prefixes (``study/sharing.py``, with a snapshot folder and ``share.enabled``): a trial forks from
the latest usable epoch snapshot of its prefix and writes the fork points' snapshots the store lacks. It
records ``reused_epochs``, ``forked_from``, ``train_flops_spent`` and ``reused_seconds`` (every trial; 0,
None, the whole run, 0 when it did not fork), ``fork_skipped`` (why it did not) and ``snapshot_skipped``
(a snapshot the size limit kept it from writing).

Trial user attrs: written through ``study.trial_record.TrialRecord`` (its docstring lists them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna

from adprune_core import checkpoint
from adprune_core.callbacks import Callback
from adprune_core.config import config_to_dict
from adprune_core.data import ImageData
from adprune_core.errors import ConfigError
from adprune_core.records import EpochRecord, FinalMetrics, RunSummary, Savings
from adprune_core.snapshots import Sharing, SnapshotStore
from adprune_core.trainer import train
from study.pareto import completed_baseline
from study.retries import INTERRUPTED_REASON, enqueue_retry
from study.sharing import fork_epochs, plan_trial, trial_sharing
from study.space import StudyConfig, baseline_config, suggest, trial_config
from study.stopping import DominatedTrialStopper, compact_record
from study.tracking import StudyTracker, TrialRun
from study.trial_record import (
    ACCURACY_DROP_ATTR,
    NEVER_PRUNED_ATTR,  # user attr and constraint (1.0 = infeasible) of a trial that made no cut
    WORKER_ATTR,
    TrialRecord,
    set_attrs,
)

__all__ = ["WORKER_ATTR", "NEVER_PRUNED_ATTR", "Objective", "retry_history", "worker_id"]
CHECKPOINT_DIR = "checkpoint"


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The stored state of running ``trial`` (its system attrs and user attrs as written so far)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _check_unused(out: Path) -> None:
    """Refuse to train into ``out`` when it already holds files: another study's or run's results (trial
    folders are unique per study, ``study.trials.trials_dir``; this guards against anything else)."""
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        raise ConfigError(f"trial folder {out} already holds files ({', '.join(held[:4])}): another study's or "
                          "run's results; not writing into it: move it away, or use another --runs-dir")


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The trials ``trial`` retries, oldest first (Optuna's ``RetryHeartbeatStaleTrialCallback``); [] if none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Recorder(Callback):
    """Trainer callback: keeps the compact per-epoch records in the trial's user attrs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.records = trial, []

    def on_resume(self, summary: RunSummary) -> None:
        self.records = [compact_record(r) for r in summary.epochs]
        set_attrs(self.trial, TrialRecord(records=tuple(self.records), resumed_from_epoch=summary.resumed_from_epoch))

    def on_fork(self, summary: RunSummary) -> None:
        self.records = [compact_record(r) for r in summary.epochs]
        shared = trial_sharing(summary)
        set_attrs(self.trial, TrialRecord(records=tuple(self.records), reused_epochs=shared.reused_epochs,
                                          forked_from=shared.forked_from))

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(compact_record(record))
        set_attrs(self.trial, TrialRecord(records=tuple(self.records)))


class Objective:
    """``objective(trial) -> values``, one full trainer run per trial, on data loaded once.

    ``snapshot_dir``: the snapshot store of shared prefixes (``study.sharing.snapshot_dir``); None, or
    ``share.enabled`` false, trains every trial from scratch."""

    def __init__(self, cfg: StudyConfig, data: ImageData, trials_dir: Path, tracker: StudyTracker | None = None,
                 progress: bool = True, snapshot_dir: Path | None = None) -> None:
        self.cfg, self.data, self.trials_dir, self.tracker = cfg, data, Path(trials_dir), tracker
        self.progress = progress
        self.store = SnapshotStore(snapshot_dir) if snapshot_dir is not None and cfg.share.enabled else None
        self.fork_points = fork_epochs(cfg) if self.store is not None else ()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        set_attrs(trial, TrialRecord(worker=worker_id()))  # first: this trial beats a heartbeat (runner.py)
        baseline = TrialRecord.from_trial(trial).baseline
        retry_of = self._retry_of(trial)
        params = {} if baseline else suggest(trial, self.cfg.space)
        run: TrialRun | None = None
        out = self.trials_dir / f"trial-{trial.number:04d}"
        try:
            cfg = baseline_config(self.cfg.trainer) if baseline else trial_config(params, self.cfg.trainer)
            if not self.progress:
                cfg = cfg.replace(train=dataclasses.replace(cfg.train, progress=False))
            config = config_to_dict(cfg)
            set_attrs(trial, TrialRecord(config=config, epochs=cfg.train.epochs, out_dir=str(out)))
            if self.tracker is not None:  # before anything else can fail: every failure is in MLflow too
                run = self.tracker.start_trial(trial.number, baseline, params, config, out, retry_of=retry_of)
                set_attrs(trial, TrialRecord(mlflow_run_id=run.run_id))
            _check_unused(out)
            resume = retry_of is not None and self._copy_retry_checkpoint(trial, retry_of, out, config)
            callbacks: list[Callback] = [_Recorder(trial)]
            if run is not None:
                callbacks.append(run)
            stopper = None
            if self.cfg.stopper is not None and not baseline:
                stopper = DominatedTrialStopper.from_trials(
                    trial.study.get_trials(deepcopy=False), self.cfg.objective_names, self.cfg.directions,
                    self.cfg.stopper.check_at, self.cfg.stopper.margin, cfg.train.epochs)
                callbacks.append(stopper)
            summary = train(cfg, out, callbacks=callbacks, data=self.data, checkpoint_dir=out / CHECKPOINT_DIR,
                            resume=resume, sharing=self._sharing(trial, cfg, stopper, resume)).summary
            set_attrs(trial, dataclasses.replace(trial_sharing(summary), fork_skipped=summary.fork_skipped,
                                                 snapshot_skipped=summary.snapshot_skipped))
            final = summary.final
            if final is None:
                raise RuntimeError(f"the trainer ended trial {trial.number} without final metrics (no epoch ran)")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            set_attrs(trial, TrialRecord(fail_reason=reason))
            if run is not None:
                run.finish("FAIL", reason, out)
            raise
        except KeyboardInterrupt:  # Ctrl-C: retried from its checkpoint like a trial whose worker died
            set_attrs(trial, TrialRecord(fail_reason=INTERRUPTED_REASON))
            frozen = _frozen(trial)
            enqueue_retry(trial.study, frozen, interrupted=True)
            done = len(TrialRecord.from_trial(frozen).records)
            print(f"trial {trial.number} interrupted after {done} epoch(s); it will be retried"
                  + (" from its checkpoint" if done else ""), flush=True)
            if run is not None:
                run.finish("FAIL", INTERRUPTED_REASON, out, interrupted=True)
                run.client.set_tag(run.run_id, "adprune.retried", "true")
            raise

        set_attrs(trial, TrialRecord(status=final.status, final=final))
        if final.status == "stopped":
            reason = final.stop_reason or "stopped"
            set_attrs(trial, TrialRecord(stop_reason=reason))
            if run is not None:
                run.finish("PRUNED", reason, out)
            raise optuna.TrialPruned(reason)
        if final.status != "completed":
            reason = f"{final.status} at epoch {final.epochs_run} (training loss not finite)"
            set_attrs(trial, TrialRecord(fail_reason=reason))
            if run is not None:
                run.finish("FAIL", reason, out)
            return tuple(math.nan for _ in self.cfg.objectives)  # Optuna marks NaN values FAIL
        self._constrain(trial, final, baseline)
        if not baseline:  # a trial that never cut its network is the baseline again: never on the front
            never = final.prune_rounds == 0
            set_attrs(trial, TrialRecord(never_pruned=never))
            trial.set_constraint(NEVER_PRUNED_ATTR, 1.0 if never else 0.0)
        if run is not None:
            if not baseline:
                run.set_tag("adprune.never_pruned", str(final.prune_rounds == 0).lower())
            run.finish("COMPLETE", None, out)
        return tuple(float(getattr(final, name)) for name in self.cfg.objective_names)

    def _sharing(self, trial: optuna.Trial, cfg: Any, stopper: DominatedTrialStopper | None,
                 resume: bool) -> Sharing | None:
        """The trainer's ``Sharing`` for this trial (``study.sharing.plan_trial``); None without a store. A
        trial that resumes from its own checkpoint does not fork (again), but still writes missing snapshots."""
        if self.store is None:
            return None
        limit = self.cfg.share.snapshot_gb * 1e9
        plan = plan_trial(self.store, cfg, self.data, self.fork_points, stopper,
                          None if limit == float("inf") else int(limit),
                          f"study {trial.study.study_name!r} trial {trial.number}")
        if resume:
            return dataclasses.replace(plan.sharing, fork_at=None)
        if plan.no_fork:
            set_attrs(trial, TrialRecord(fork_skipped=plan.no_fork))
        return plan.sharing

    def _retry_of(self, trial: optuna.Trial) -> int | None:
        """The trial this one retries (the last of its retry history), or None. The retry starts without the
        dead run's attrs: ``study.retries.enqueue_retry`` left them out of the copy."""
        history = retry_history(_frozen(trial))
        if not history:
            return None
        set_attrs(trial, TrialRecord(retry_of=history[-1]))
        return history[-1]

    def _copy_retry_checkpoint(self, trial: optuna.Trial, retry_of: int, out: Path, config: dict[str, Any]) -> bool:
        """Copy trial ``retry_of``'s last checkpoint into ``out``; whether there is one to resume from."""
        source = self.trials_dir / f"trial-{retry_of:04d}" / CHECKPOINT_DIR
        try:
            state = checkpoint.read_state(source)
            if state is not None:
                checkpoint.load_checkpoint(source)  # every tensor: a truncated file fails here, not in train
        except Exception as exc:  # a damaged file (SafetensorError, bad JSON, not a checkpoint): start afresh
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            set_attrs(trial, TrialRecord(resume_skipped=f"trial {retry_of}'s checkpoint "
                                         f"{checkpoint.checkpoint_path(source)} is unreadable "
                                         f"({type(exc).__name__}: {first}); started from scratch"))
            return False
        if state is None:
            set_attrs(trial, TrialRecord(resume_skipped=f"no checkpoint of trial {retry_of} in {source} (it died "
                                         "before its first epoch ended, or ran on another machine)"))
            return False
        mismatch = checkpoint.config_mismatch(state["summary"]["config"], config)
        if mismatch:
            set_attrs(trial, TrialRecord(resume_skipped=f"trial {retry_of}'s checkpoint has another config: "
                                         + "; ".join(mismatch[:5])))
            return False
        return checkpoint.copy_checkpoint(source, out / CHECKPOINT_DIR)

    def _constrain(self, trial: optuna.Trial, final: FinalMetrics, baseline: bool) -> None:
        """``constraints.max_accuracy_drop``: the constraint ``accuracy_drop`` - limit (``Savings.accuracy_drop``
        against the study's completed baseline; the baseline against itself)."""
        limit = self.cfg.max_accuracy_drop
        if limit is None:
            return
        if baseline:
            reference: FinalMetrics | None = final
        else:
            base = completed_baseline(trial.study.get_trials(deepcopy=False,
                                                             states=(optuna.trial.TrialState.COMPLETE,)))
            if base is None:
                return  # no baseline to compare with: left unconstrained (feasible)
            reference = TrialRecord.from_trial(base).final
        drop = Savings.of(final, reference).accuracy_drop
        set_attrs(trial, TrialRecord(accuracy_drop=drop))
        trial.set_constraint(ACCURACY_DROP_ATTR, drop - limit)

