"""One trial of an opened study (``reports.study_view``), for ``adprune pick`` and ``adprune control``.

Reads the stores ``study.runner`` writes (``study.stores``: embedded in the runtime folder, or servers);
never creates one.
Every user mistake (no store, unknown study, trial out of range, a trial without a final network) is an
``ADPruneError`` whose one line names the value, the rule and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from adprune_core.errors import ADPruneError
from reports.study_view import StudyView
from study.pareto import feasible
from study.trial_record import TrialRecord


def completed_trial(view: StudyView, number: int) -> FrozenTrial:
    """Trial ``number`` if it is COMPLETE (only those have a final network); ADPruneError otherwise."""
    by_number = {t.number: t for t in view.trials}
    if number not in by_number:
        span = f"0..{max(by_number)}"  # a view has trials (open_study_view)
        raise ADPruneError(f"trial {number} is not in study {view.name!r} (trials: {span}); "
                           f"pick one of its Pareto trials: {view.pareto_numbers()}")
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE:
        record = TrialRecord.from_trial(trial)
        why = record.fail_reason or record.stop_reason
        raise ADPruneError(f"trial {number} of study {view.name!r} is {trial.state.name}"
                           + (f" ({_first_line(why)})" if why else "")
                           + f"; only COMPLETE trials have a final network; pick one of the Pareto trials: "
                             f"{view.pareto_numbers()}")
    return trial


def pareto_note(view: StudyView, trial: FrozenTrial) -> str | None:
    """Why ``trial`` is not on the Pareto front, or None when it is."""
    if any(t.number == trial.number for t in view.pareto):
        return None
    if not feasible(trial):
        drop = TrialRecord.from_trial(trial).accuracy_drop
        return (f"trial {trial.number} is infeasible (val_top1 {drop:.4f} below the baseline, more than the "
                f"study's max_accuracy_drop)" if drop is not None else f"trial {trial.number} is infeasible")
    return f"trial {trial.number} is not on the Pareto front (another trial is at least as good in every objective)"


def trial_model_dir(trial: FrozenTrial, client: Any | None = None, scratch: Path | None = None) -> Path:
    """The folder with the trial's final network (``model.safetensors`` + ``model.json``).

    The trainer's ``<out_dir>/model``; when that is gone, the ``model/`` artifact of the trial's MLflow run,
    downloaded into ``scratch`` (needs ``client``)."""
    record = TrialRecord.from_trial(trial)
    out_dir = record.out_dir
    local = Path(out_dir) / "model" if out_dir else None
    if local is not None and (local / "model.json").is_file() and (local / "model.safetensors").is_file():
        return local
    run_id = record.mlflow_run_id
    if client is not None and run_id and scratch is not None:
        try:
            return Path(client.download_artifacts(run_id, "model", str(scratch)))
        except Exception:  # a missing artifact or store: the error below says what to do
            logging.getLogger(__name__).debug("no model artifact in run %s", run_id, exc_info=True)
    raise ADPruneError(f"trial {trial.number}'s network is missing: neither {local} nor the model/ artifact of "
                       f"MLflow run {run_id} exists; was the runs folder moved or cleaned? Re-run the study")


def _first_line(text: str, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."
