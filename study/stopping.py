"""The dominated-trial stopper: stop a trial that completed trials already beat at the same epoch.

Optuna's pruners refuse studies with several objectives, so this is ours, as a trainer callback.
At each check epoch (``stopper.check_at``: fractions of ``train.epochs``, rounded half up, clamped to
1 .. epochs - 1) the running trial's record gives a point: the objectives' values so far
(``val_top1`` of that epoch, ``params``/``flops`` of the network trained during it,
``train_flops_cum`` up to it). Every COMPLETE trial of the same study with the same ``train.epochs``
stored its per-epoch records (trial user attr ``records``); if one of them, at that epoch,
dominates the running point by ``stopper.margin`` (``study/pareto.py``), the callback returns a reason:
the trainer stops with status ``stopped`` and the objective marks the trial PRUNED.
The dense baseline is never stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from adprune_core.callbacks import Callback
from adprune_core.records import EpochRecord
from study.pareto import dominates_by_margin
from study.space import epoch_at
from study.trial_record import TrialRecord

RECORD_KEYS = ("epoch", "train_loss", "train_top1", "val_top1", "params", "flops", "train_flops_cum")


def check_epochs(check_at: Iterable[float], epochs: int) -> tuple[int, ...]:
    """The epochs (1-based) at which to check, for a run of ``epochs``; never the last one."""
    at = {epoch_at(f, epochs) for f in check_at}  # the same rounding as the space's prune epochs
    return tuple(sorted(e for e in at if 1 <= e < epochs))


def compact_record(record: EpochRecord | Mapping[str, Any]) -> dict[str, float]:
    """The part of a trainer epoch record (an ``EpochRecord``, or one as ``summary.json`` and a snapshot
    store it) the study keeps per epoch (plain numbers)."""
    if isinstance(record, EpochRecord):
        return {k: getattr(record, k) for k in RECORD_KEYS}
    return {k: record[k] for k in RECORD_KEYS if k in record}


def point(record: Mapping[str, Any], names: Sequence[str]) -> tuple[float, ...]:
    return tuple(float(record[n]) for n in names)


def dominated_reason(current: Mapping[str, Any], references: Mapping[int, Mapping[str, Any]],
                     names: Sequence[str], directions: Sequence[str], margin: float) -> str | None:
    """Why ``current`` (an epoch record) is hopeless, or None.

    ``references`` maps a completed trial's number to its record at the same epoch.
    """
    mine = point(current, names)
    for number, ref in sorted(references.items()):
        theirs = point(ref, names)
        if dominates_by_margin(theirs, mine, directions, margin):
            detail = ", ".join(f"{n} {t:.4g} vs {m:.4g}" for n, t, m in zip(names, theirs, mine))
            return (f"dominated at epoch {current['epoch']} by trial {number} by margin {margin:g} "
                    f"({detail})")
    return None


class DominatedTrialStopper(Callback):
    """Trainer callback: at the check epochs, a reason to stop when a completed trial dominates."""

    def __init__(self, names: Sequence[str], directions: Sequence[str], epochs: Iterable[int], margin: float,
                 completed: Mapping[int, Sequence[Mapping[str, Any]]]) -> None:
        """``completed`` maps trial number -> its per-epoch records (``compact_record``s)."""
        self.names, self.directions, self.margin = tuple(names), tuple(directions), margin
        self.epochs = set(epochs)
        self.references: dict[int, dict[int, Mapping[str, Any]]] = {e: {} for e in self.epochs}
        for number, records in completed.items():
            for rec in records:
                if rec.get("epoch") in self.epochs and all(n in rec for n in self.names):
                    self.references[rec["epoch"]][number] = rec
        self.reason: str | None = None

    def on_epoch_end(self, record: EpochRecord) -> str | None:
        if record.epoch not in self.epochs or self.reason:
            return None
        self.reason = dominated_reason(compact_record(record), self.references[record.epoch], self.names,
                                       self.directions, self.margin)
        return self.reason

    def first_stop(self, records: Iterable[Mapping[str, Any]]) -> int | None:
        """The first epoch among ``records`` (epoch records, in order) at which this stopper would stop a
        run, or None; this stopper is not changed (``study.sharing`` asks it before a trial forks)."""
        for rec in records:
            epoch = rec["epoch"]
            if epoch in self.epochs and dominated_reason(rec, self.references[epoch], self.names, self.directions,
                                                         self.margin):
                return int(epoch)
        return None

    @classmethod
    def from_trials(cls, trials: Iterable[Any], names: Sequence[str], directions: Sequence[str],
                    check_at: Iterable[float], margin: float, epochs: int) -> DominatedTrialStopper:
        """Built from Optuna trials: the COMPLETE ones that ran ``epochs`` epochs, with their records."""
        records = {t.number: TrialRecord.from_trial(t) for t in trials if t.state.name == "COMPLETE"}
        completed = {n: r.records for n, r in records.items() if r.epochs == epochs}
        return cls(names, directions, check_epochs(check_at, epochs), margin, completed)
