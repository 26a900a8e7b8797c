"""Retrying a trial whose run did not end: its worker died (no heartbeat), or Ctrl-C interrupted it.

A retry is a WAITING copy of the trial, as Optuna's ``RetryHeartbeatStaleTrialCallback`` makes it: the
same params, the system attrs ``failed_trial`` (the first trial of the series) and ``retry_history``
(every earlier trial of the series, oldest first), so ``retry_history`` and the counting in
``study.trials`` read both kinds alike. Unlike Optuna's copy, it does not inherit what belonged to the
dead run (``study.trial_record.RUN_ATTRS``: its MLflow run id, records, reasons, output folder...): a retry
is a new run of the same trial, with its own MLflow run, that continues from the dead run's last epoch checkpoint
(``study/objective.py``). ``baseline`` and any other attr that describes the trial itself are kept.

Retries after a Ctrl-C are not limited (the user stopped the run, the trial did nothing wrong) and do not
use up the retries a trial gets when its worker dies (``MAX_RETRY`` in ``study/trials.py``): their
numbers are listed in the system attr ``adprune_interrupted``.

Ctrl-C in a trial: Optuna logs "Trial n failed ... KeyboardInterrupt" with a full traceback; the study
says it in one line instead (``QuietInterruptedTrials``), and so for a ``QuietTrialEnd``.
"""

from __future__ import annotations

import logging

import optuna

from study.trial_record import RUN_ATTRS

INTERRUPTED_REASON = "interrupted"
INTERRUPTED_ATTR = "adprune_interrupted"  # system attr: the trials of a retry series that Ctrl-C ended


class QuietTrialEnd(Exception):
    """An exception that ends a trial the study reports in a line of its own (``study.trials.TargetHeld``):
    Optuna's warning and traceback for it are dropped, as for Ctrl-C."""


def died_retries(trial: optuna.trial.FrozenTrial) -> int:
    """How many trials of ``trial``'s retry series lost their worker (the interrupted ones aside)."""
    history = trial.system_attrs.get("retry_history", [])
    return len(history) - len(trial.system_attrs.get(INTERRUPTED_ATTR, []))


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, interrupted: bool = False,
                  max_died: int | None = None) -> bool:
    """Enqueue a WAITING retry of ``trial`` (see the module docstring); returns whether it did. A trial
    whose worker died is retried while its series lost at most ``max_died`` workers (None: always)."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    stopped = [*trial.system_attrs.get(INTERRUPTED_ATTR, []), *([trial.number] if interrupted else [])]
    if not interrupted and max_died is not None and len(history) - len(stopped) > max_died:
        return False
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history, INTERRUPTED_ATTR: stopped}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}, system_attrs=system_attrs))
    return True


class QuietInterruptedTrials(logging.Filter):
    """Drops Optuna's two warnings about a trial that Ctrl-C (or a ``QuietTrialEnd``) ended ("Trial n failed
    with parameters ... KeyboardInterrupt()" with its traceback, then "Trial n failed with value None."):
    the study prints one line for it."""

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, QuietTrialEnd)):
            self._interrupted.add(message.split(" failed", 1)[0])  # "Trial 3"
            return False
        head = message.split(" failed with value", 1)[0]
        if head in self._interrupted and " failed with value" in message:
            self._interrupted.discard(head)
            return False
        return True


_FILTER = QuietInterruptedTrials()


def quiet_interrupted_trials() -> None:
    """Install ``QuietInterruptedTrials`` on Optuna's optimize logger (once per process)."""
    logger = logging.getLogger("optuna.study._optimize")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
