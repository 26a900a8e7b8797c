"""One trial: suggested params -> trainer config -> ``adprune_core.trainer.train`` with callbacks -> values.

The trial's values are the final metrics named by the study's objectives. What ends how:

- completed run: state COMPLETE, values returned; with ``constraints.max_accuracy_drop`` the trial
  sets the constraint ``accuracy_drop`` = (baseline val_top1 - val_top1) - max_accuracy_drop
  (feasible when <= 0; Optuna's samplers and our Pareto front respect it);
- stopped by the dominated-trial stopper: ``optuna.TrialPruned`` -> state PRUNED;
- diverged (loss not finite): state FAIL with the reason. A diverged run has no meaningful end
  point: its partial ``train_flops_cum`` would put it on the Pareto front for nothing;
- an exception: state FAIL with the error recorded; the study goes on (``optimize(catch=...)``).

Trial user attrs: ``baseline``, ``config`` (resolved trainer config), ``epochs``, ``out_dir``,
``mlflow_run_id``, ``records`` (per-epoch ``val_top1``, ``params``, ``flops``, ``train_flops_cum``,
``train_loss``, ``train_top1``; rewritten every epoch, read by the stopper), ``status`` (trainer's),
``final``, ``compression_params``, ``compression_flops``, ``accuracy_drop``, ``stop_reason``,
``fail_reason``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna

from adprune_core.config import config_to_dict
from adprune_core.data import ImageData
from adprune_core.trainer import train
from study.space import StudyConfig, baseline_config, suggest, trial_config
from study.stopping import DominatedTrialStopper, compact_record
from study.tracking import StudyTracker, TrialRun


class _Recorder:
    """Trainer callback: keeps the compact per-epoch records in the trial's user attrs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.records = trial, []

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.records.append(compact_record(record))
        self.trial.set_user_attr("records", self.records)


class Objective:
    """``objective(trial) -> values``, one full trainer run per trial, on data loaded once."""

    def __init__(self, cfg: StudyConfig, data: ImageData, trials_dir: Path, tracker: StudyTracker | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.data, self.trials_dir, self.tracker = cfg, data, Path(trials_dir), tracker
        self.progress = progress

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        baseline = bool(trial.user_attrs.get("baseline"))
        params = {} if baseline else suggest(trial, self.cfg.space)
        run: TrialRun | None = None
        out = self.trials_dir / f"trial-{trial.number:04d}"
        try:
            cfg = baseline_config(self.cfg.trainer) if baseline else trial_config(params, self.cfg.trainer)
            if not self.progress:
                cfg = cfg.replace(train=dataclasses.replace(cfg.train, progress=False))
            config = config_to_dict(cfg)
            for key, value in (("config", config), ("epochs", cfg.train.epochs), ("out_dir", str(out))):
                trial.set_user_attr(key, value)
            if self.tracker is not None:
                run = self.tracker.start_trial(trial.number, baseline, params, config, out)
                trial.set_user_attr("mlflow_run_id", run.run_id)
            callbacks: list[Any] = [_Recorder(trial)]
            if run is not None:
                callbacks.append(run)
            if self.cfg.stopper is not None and not baseline:
                callbacks.append(DominatedTrialStopper.from_trials(
                    trial.study.get_trials(deepcopy=False), self.cfg.objective_names, self.cfg.directions,
                    self.cfg.stopper.check_at, self.cfg.stopper.margin, cfg.train.epochs))
            final = train(cfg, out, callbacks=callbacks, data=self.data).summary["final"]
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            if run is not None:
                run.finish("FAIL", reason, out)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            if run is not None:
                run.finish("FAIL", "interrupted", out, interrupted=True)
            raise

        trial.set_user_attr("status", final["status"])
        trial.set_user_attr("final", final)
        trial.set_user_attr("compression_params", final["compression_params"])
        trial.set_user_attr("compression_flops", final["compression_flops"])
        if final["status"] == "stopped":
            reason = final.get("stop_reason", "stopped")
            trial.set_user_attr("stop_reason", reason)
            if run is not None:
                run.finish("PRUNED", reason, out)
            raise optuna.TrialPruned(reason)
        if final["status"] != "completed":
            reason = f"{final['status']} at epoch {final['epochs_run']} (training loss not finite)"
            trial.set_user_attr("fail_reason", reason)
            if run is not None:
                run.finish("FAIL", reason, out)
            return tuple(math.nan for _ in self.cfg.objectives)  # Optuna marks NaN values FAIL
        self._constrain(trial, final["val_top1"], baseline)
        if run is not None:
            run.finish("COMPLETE", None, out)
        return tuple(float(final[name]) for name in self.cfg.objective_names)

    def _constrain(self, trial: optuna.Trial, val_top1: float, baseline: bool) -> None:
        limit = self.cfg.max_accuracy_drop
        if limit is None:
            return
        if baseline:
            reference = val_top1
        else:
            done = [t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                    if t.user_attrs.get("baseline")]
            if not done:
                return  # no baseline to compare with: left unconstrained (feasible)
            reference = done[-1].user_attrs["final"]["val_top1"]
        drop = reference - val_top1
        trial.set_user_attr("accuracy_drop", drop)
        trial.set_constraint("accuracy_drop", drop - limit)

