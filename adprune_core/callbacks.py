"""What a training run tells the world: the ``Callback`` base class and the two built-in writers.

The loop (``adprune_core.trainer.train``) calls, on every callback it holds (the writers first, then the
caller's, in order):

- ``on_resume(summary)`` once, before a run continues from a checkpoint (``epochs`` and ``prune_events``
  of the finished epochs, ``resumed_from_epoch``); ``on_fork(summary)`` once, before a run forked from a
  snapshot continues (``epochs`` holds 1..e-1, ``forked_from`` says which; epoch e comes through
  ``on_epoch_end``);
- per epoch, once it is recorded and any cut is done: ``on_prune(event)`` after a cut,
  ``on_epoch_state(summary, state)`` (the summary so far and what a checkpoint needs; ``final`` has the
  epoch's status but no stop reason yet), then ``on_epoch_end(record)``, which may return a reason to stop
  the run early, then ``on_summary(summary)`` with ``final.status`` ``running``;
- ``on_summary(summary)`` once more when the run ends: with its final status (and ``test_top1``), or,
  when Ctrl-C or an error ended it after at least one epoch, ``interrupted`` or ``failed``;
- ``on_run_end(summary)`` after a run that ended by itself (completed, stopped, diverged) wrote its network.

Records are frozen: read them, keep them, never modify them. Every method is a no-op here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adprune_core import checkpoint
from adprune_core.records import SUMMARY_FILE, EpochRecord, PruneEvent, RunSummary


@dataclass(frozen=True)
class RunState:
    """What a checkpoint holds besides the summary: the network and its optimizer as they are now (live
    objects, not copies), the run's status at this epoch, and the pruning counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    group_widths: Mapping[str, int]
    status: str
    train_flops_cum: int
    rounds: int
    last_prune_epoch: int
    pruning_over: bool
    density_history: Sequence[Mapping[str, float]]


class Callback:
    """Hooks into a training run (module docstring); subclass and override what you need."""

    def on_resume(self, summary: RunSummary) -> None:
        """Once, before a run continues from a checkpoint."""

    def on_fork(self, summary: RunSummary) -> None:
        """Once, before a run forked from a snapshot continues."""

    def on_prune(self, event: PruneEvent) -> None:
        """After each cut."""

    def on_epoch_state(self, summary: RunSummary, state: RunState) -> None:
        """After each epoch is recorded, before ``on_epoch_end``."""

    def on_epoch_end(self, record: EpochRecord) -> str | None:
        """After each epoch; a returned reason stops the run (status ``stopped``)."""
        return None

    def on_summary(self, summary: RunSummary) -> None:
        """After each epoch (status ``running``) and once at the end (module docstring)."""

    def on_run_end(self, summary: RunSummary) -> None:
        """Once, after a run that ended by itself saved its network."""


class SummaryWriter(Callback):
    """Writes ``<out_dir>/summary.json`` atomically whenever the summary changes (a crash loses nothing
    already recorded; a killed run's file keeps ``final.status`` ``running``)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / SUMMARY_FILE

    def on_summary(self, summary: RunSummary) -> None:
        summary.write(self.path)


class CheckpointWriter(Callback):
    """Writes ``adprune_core.checkpoint``'s one-file checkpoint after every epoch (before the other
    callbacks' ``on_epoch_end``: a callback that raises finds this epoch saved) and deletes it when the run
    ended by itself (a run that Ctrl-C or an error ended keeps it, to resume from)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def on_epoch_state(self, summary: RunSummary, state: RunState) -> None:
        checkpoint.save_checkpoint(
            self.directory, model=state.model, optimizer=state.optimizer, epoch=summary.epochs[-1].epoch,
            group_widths=state.group_widths,
            state={"status": state.status, "summary": summary.to_dict(), "train_flops_cum": state.train_flops_cum,
                   "rounds": state.rounds, "last_prune_epoch": state.last_prune_epoch,
                   "pruning_over": state.pruning_over, "density_history": list(state.density_history)})

    def on_run_end(self, summary: RunSummary) -> None:
        checkpoint.remove_checkpoint(self.directory)
