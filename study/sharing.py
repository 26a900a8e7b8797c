"""Shared-prefix trials, the study's side: the fork points of a search space, which snapshot a trial
starts from, and what sharing saved (``adprune_core.snapshots`` is the store, the key and the fork).

- ``fork_epochs(cfg)``: the epochs at which a trial of the space can make its first prune decision,
  from the extremes of the space (a ``fixed``/``interval`` trial prunes first at ``prune.first_frac``'s
  epoch, a ``saturation`` trial anywhere from ``max(warmup, patience + 1)`` to the second-to-last
  epoch). Every trial writes the snapshots of these epochs that the store lacks, while it has not cut:
  in practice the dense baseline (trial 0) writes them all. Only for the disk: which snapshot a trial
  uses is decided exactly, below.
- ``choose_fork``: a trial starts from the latest snapshot at or before (a) its own first prune
  decision, found by replaying its schedule over the snapshot's density history
  (``policy.first_prune_epoch``), and (b) the first epoch at which the dominated-trial stopper would
  stop it, found by feeding the snapshot's records to the trial's stopper (``first_stop``). Up to that
  epoch a fresh run computes exactly what the snapshot holds and the stopper lets it go on; the decisions
  at and after the fork epoch are taken live. So stopper verdicts, prune epochs and everything after
  are those of a fresh run.
- Accounting (``trial_sharing``, ``SharingTotals``): ``train_flops_cum`` still counts the whole run;
  ``train_flops_spent`` is what the trial computed itself (the whole run less the reused epochs'),
  ``reused_epochs`` and ``reused_seconds`` (the wall time the reused epochs took the run that trained
  them) say what it did not redo.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adprune_core import policy, snapshots
from adprune_core.config import Config
from adprune_core.data import ImageData
from adprune_core.errors import ConfigError
from adprune_core.records import RunSummary
from study.space import FIRST_FRAC, INTERVAL_FRAC, ROUNDS, StudyConfig, trial_config
from study.stopping import DominatedTrialStopper, compact_record
from study.trial_record import TrialRecord

SNAPSHOTS_DIR = "snapshots"  # under the runtime folder
# Searched keys that move a trial's first prune decision: the extremes of these bound the fork points.
TIMING_KEYS = ("prune.schedule", FIRST_FRAC, INTERVAL_FRAC, ROUNDS, "prune.warmup", "prune.interval",
               "prune.patience", "prune.epochs", "prune.max_rounds")


def snapshot_dir(runs_dir: str | Path, given: str | Path | None = None) -> Path:
    """Where a study's snapshots live: ``given`` (``--snapshot-dir``), else ``<runs>/snapshots``."""
    return Path(given) if given else Path(runs_dir) / SNAPSHOTS_DIR


def fork_epochs(cfg: StudyConfig) -> tuple[int, ...]:
    """The epochs (1-based, ascending) at which some trial of ``cfg``'s space can make its first prune
    decision: from the earliest to the latest over the extremes of the searched timing keys."""
    epochs = cfg.trainer.train.epochs
    choices = []
    for d in cfg.space:
        if d.key in TIMING_KEYS:
            choices.append([(d.key, v) for v in (d.choices if d.type == "categorical" else
                                                 tuple(map(int if d.type == "int" else float, (d.low, d.high))))])
    ranges = []
    for combo in itertools.product(*choices):
        try:
            prune = trial_config(dict(combo), cfg.trainer).prune
        except ConfigError:  # a combination no trial can draw (the space was checked at its own extremes)
            continue
        found = policy.first_prune_range(prune, epochs)
        if found is not None:
            ranges.append(found)
    if not ranges:
        return ()
    return tuple(range(min(a for a, _ in ranges), max(b for _, b in ranges) + 1))


def choose_fork(available: Sequence[int], first_prune: int | None, first_stop: int | None) -> int | None:
    """The epoch a trial forks at: the latest of ``available`` snapshot epochs at or before its first prune
    decision and the stopper's first stop (each None when it does not come within the snapshots); None
    when no snapshot is early enough. Pure."""
    limits = [e for e in (first_prune, first_stop) if e is not None]
    usable = [e for e in available if not limits or e <= min(limits)]
    return max(usable) if usable else None


@dataclass(frozen=True)
class SharePlan:
    """What one trial does with the store: the trainer's ``Sharing``, and why it does not fork (or None)."""

    sharing: snapshots.Sharing
    no_fork: str | None = None


def plan_trial(store: snapshots.SnapshotStore, cfg: Config, data: ImageData, fork_points: Sequence[int],
               stopper: DominatedTrialStopper | None, max_bytes: int | None, written_by: str) -> SharePlan:
    """The ``Sharing`` of a trial of trainer config ``cfg``: write the fork points' snapshots the store lacks,
    and fork from the one ``choose_fork`` picks among those the store has under the trial's own keys."""
    points = [e for e in fork_points if e < cfg.train.epochs]
    keys = {e: snapshots.prefix_key(cfg, data, e) for e in points}
    available = [e for e in points if store.has(keys[e])]
    base = snapshots.Sharing(store, frozenset(points), None, max_bytes, written_by)
    latest = store.read_state(keys[available[-1]]) if available else None
    if latest is None:
        return SharePlan(base, f"no snapshot of this trial's prefix in {store.root} yet" if points else
                         "this study's space has no fork points (no trial prunes)")
    first_prune = policy.first_prune_epoch(cfg.prune, cfg.train.epochs, latest["density_history"])
    records = [compact_record(r) for r in (*latest["epochs"], latest["record"])]
    first_stop = stopper.first_stop(records) if stopper is not None else None
    epoch = choose_fork(available, first_prune, first_stop)
    if epoch is None:
        return SharePlan(base, f"its first prune or stop comes before the earliest snapshot (epoch {available[0]})")
    return SharePlan(snapshots.Sharing(store, frozenset(points), epoch, max_bytes, written_by))


# --- accounting ---------------------------------------------------------------------------------------

def trial_sharing(summary: RunSummary) -> TrialRecord:
    """A run's sharing figures from its ``summary``, as the trial records them: ``reused_epochs`` (0 when it
    did not fork), ``forked_from`` (which snapshot, written by whom; None), ``train_flops_spent`` (its own
    training FLOPs: ``final.train_flops_cum`` less the reused epochs'), ``reused_seconds`` (wall time of the
    reused epochs in the run that trained them). The other fields are left unset."""
    fork = summary.forked_from
    cum = summary.final.train_flops_cum if summary.final is not None else 0
    if not fork:
        return TrialRecord(reused_epochs=0, forked_from=None, train_flops_spent=cum, reused_seconds=0.0)
    who = f"{fork['written_by']}, " if fork.get("written_by") else ""
    return TrialRecord(reused_epochs=int(fork["epoch"]),
                       forked_from=f"{who}epoch {fork['epoch']} (snapshot {str(fork['key'])[:12]})",
                       train_flops_spent=cum - int(fork["train_flops_cum"]), reused_seconds=float(fork["seconds"]))


@dataclass(frozen=True)
class SharingTotals:
    """Sharing over a study's finished trials (those that recorded ``train_flops_spent``)."""

    trials: int
    forked: int
    reused_epochs: int
    train_flops_cum: float  # what the trials count (whole runs)
    train_flops_spent: float  # what they computed themselves
    reused_seconds: float

    @property
    def train_flops_saved(self) -> float:
        return self.train_flops_cum - self.train_flops_spent

    @property
    def compute_ratio(self) -> float:
        """Counted over spent (x less compute); 1.0 without sharing."""
        return self.train_flops_cum / self.train_flops_spent if self.train_flops_spent > 0 else 1.0


def sharing_totals(trials: Iterable[Any]) -> SharingTotals:
    """Totals over Optuna trials (their ``TrialRecord``: ``reused_epochs``, ``train_flops_spent``,
    ``reused_seconds``, ``final.train_flops_cum``); trials without ``train_flops_spent`` (running, failed
    early) are left out."""
    rows = [r for r in map(TrialRecord.from_trial, trials) if r.train_flops_spent is not None]
    return SharingTotals(
        trials=len(rows), forked=sum((r.reused_epochs or 0) > 0 for r in rows),
        reused_epochs=sum(r.reused_epochs or 0 for r in rows),
        train_flops_cum=float(sum(r.final.train_flops_cum if r.final is not None else r.train_flops_spent or 0
                                  for r in rows)),
        train_flops_spent=float(sum(r.train_flops_spent or 0 for r in rows)),
        reused_seconds=float(sum(r.reused_seconds or 0.0 for r in rows)))


def sharing_text(t: SharingTotals) -> str:
    """One line: how many trials forked and what that saved."""
    return (f"shared prefixes: {t.forked} of {t.trials} trial(s) forked from a snapshot, {t.reused_epochs} epoch(s) "
            f"not retrained; training compute spent {t.train_flops_spent:.3g} of {t.train_flops_cum:.3g} FLOPs "
            f"counted ({t.compute_ratio:.2f}x less), about {t.reused_seconds:.0f} s of training saved")
