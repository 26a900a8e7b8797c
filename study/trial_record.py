"""A trial's record in Optuna, typed: ``TrialRecord``, the one place that knows the trial user-attr names.

The objective (``study/objective.py``) writes a trial's attrs through ``TrialRecord(...).to_attrs()``
(``set_attrs``), and everything in ``study/`` and ``reports/`` that reads a trial reads
``TrialRecord.from_trial(trial)``. The attr names are the field names (the constants below):

- the trial itself: ``baseline`` (the dense baseline; enqueued with it), ``worker`` (host:pid of the
  process running it; its presence says the trial beats a heartbeat);
- its run: ``config`` (the resolved trainer config), ``epochs``, ``out_dir``, ``mlflow_run_id``,
  ``records`` (per epoch: ``study.stopping.compact_record``; rewritten every epoch, read by the stopper);
- its end: ``status`` (the trainer's), ``final`` (``adprune_core.records.FinalMetrics`` as its dict; the
  attrs ``compression_params`` and ``compression_flops`` are written beside it, from it),
  ``accuracy_drop`` (baseline val_top1 - val_top1: ``Savings.accuracy_drop``), ``never_pruned``,
  ``stop_reason``, ``fail_reason``;
- retries (``study.retries``): ``retry_of``, ``resumed_from_epoch``, ``resume_skipped``;
- shared prefixes (``study.sharing``): ``reused_epochs``, ``forked_from``, ``fork_skipped``,
  ``snapshot_skipped``, ``train_flops_spent``, ``reused_seconds``.

``to_attrs`` gives only the fields that differ from their default (None, False, empty): a partial record
writes just what it sets, and an attr never written reads back as the default. Attrs this class does not
know are ignored on reading. A ``final`` attr that is not a final-metrics record is a one-line
``RecordError`` naming the trial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adprune_core.records import FinalMetrics, RecordError, Savings

BASELINE_ATTR, WORKER_ATTR = "baseline", "worker"
CONFIG_ATTR, EPOCHS_ATTR, OUT_DIR_ATTR, MLFLOW_RUN_ID_ATTR, RECORDS_ATTR = (
    "config", "epochs", "out_dir", "mlflow_run_id", "records")
STATUS_ATTR, FINAL_ATTR, ACCURACY_DROP_ATTR, NEVER_PRUNED_ATTR = "status", "final", "accuracy_drop", "never_pruned"
STOP_REASON_ATTR, FAIL_REASON_ATTR = "stop_reason", "fail_reason"
COMPRESSION_PARAMS_ATTR, COMPRESSION_FLOPS_ATTR = "compression_params", "compression_flops"  # written from final
RETRY_OF_ATTR, RESUMED_FROM_EPOCH_ATTR, RESUME_SKIPPED_ATTR = "retry_of", "resumed_from_epoch", "resume_skipped"
REUSED_EPOCHS_ATTR, FORKED_FROM_ATTR, FORK_SKIPPED_ATTR = "reused_epochs", "forked_from", "fork_skipped"
SNAPSHOT_SKIPPED_ATTR, TRAIN_FLOPS_SPENT_ATTR, REUSED_SECONDS_ATTR = (
    "snapshot_skipped", "train_flops_spent", "reused_seconds")


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class TrialRecord:
    """What a trial recorded (module docstring); every field is optional until the trial wrote it."""

    baseline: bool = False
    worker: str | None = None
    config: Mapping[str, Any] | None = None
    epochs: int | None = None
    out_dir: str | None = None
    mlflow_run_id: str | None = None
    records: tuple[Mapping[str, float], ...] = ()
    status: str | None = None
    final: FinalMetrics | None = None
    accuracy_drop: float | None = None
    never_pruned: bool | None = None
    stop_reason: str | None = None
    fail_reason: str | None = None
    retry_of: int | None = None
    resumed_from_epoch: int | None = None
    resume_skipped: str | None = None
    reused_epochs: int | None = None
    forked_from: str | None = None
    fork_skipped: str | None = None
    snapshot_skipped: str | None = None
    train_flops_spent: int | None = None
    reused_seconds: float | None = None

    @property
    def compression_params(self) -> float | None:
        """Dense params / final params (x), from ``final``; None before the run ended."""
        return self.final.compression_params if self.final is not None else None

    @property
    def compression_flops(self) -> float | None:
        """Dense inference FLOPs / final inference FLOPs (x), from ``final``; None before the run ended."""
        return self.final.compression_flops if self.final is not None else None

    @property
    def pruned(self) -> bool:
        """Whether the run ended with at least one cut (a network the controls can retrain)."""
        return self.final is not None and self.final.prune_rounds > 0

    @property
    def seed(self) -> int | None:
        """``train.seed`` of the trial's config (None without a config)."""
        seed = ((self.config or {}).get("train") or {}).get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    def savings(self, baseline: TrialRecord | None) -> Savings:
        """This trial's end point against ``baseline``'s (``Savings.of``; NaN where either has no final)."""
        return Savings.of(self.final or {}, baseline.final if baseline is not None else None)

    def to_attrs(self) -> dict[str, Any]:
        """The user attrs to write: every field that differs from its default, as plain JSON values (``final``
        as its dict, with ``compression_params``/``compression_flops`` beside it)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if isinstance(value, FinalMetrics):
                out[f.name] = value.to_dict()
                out[COMPRESSION_PARAMS_ATTR], out[COMPRESSION_FLOPS_ATTR] = value.compression_params, \
                    value.compression_flops
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            elif isinstance(value, tuple):
                out[f.name] = [dict(v) for v in value]
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str = "trial") -> TrialRecord:
        """From a trial's user attrs (a missing or None attr gives the field's default)."""
        final = attrs.get(FINAL_ATTR)
        try:
            metrics = FinalMetrics.from_dict(final, f"{where}'s user attr {FINAL_ATTR!r}") if final else None
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{where}'s user attr {FINAL_ATTR!r} has a field of the wrong type ({exc}); "
                              "the trial was not written by adprune study") from None
        never = attrs.get(NEVER_PRUNED_ATTR)  # bool, or absent (the baseline; a study from before the attr)
        return cls(
            baseline=bool(attrs.get(BASELINE_ATTR)), worker=_opt(attrs.get(WORKER_ATTR), str),
            config=attrs.get(CONFIG_ATTR), epochs=_opt(attrs.get(EPOCHS_ATTR), int),
            out_dir=_opt(attrs.get(OUT_DIR_ATTR), str), mlflow_run_id=_opt(attrs.get(MLFLOW_RUN_ID_ATTR), str),
            records=tuple(attrs.get(RECORDS_ATTR) or ()), status=_opt(attrs.get(STATUS_ATTR), str), final=metrics,
            accuracy_drop=_opt(attrs.get(ACCURACY_DROP_ATTR), float),
            never_pruned=None if never is None else bool(never),
            stop_reason=attrs.get(STOP_REASON_ATTR), fail_reason=attrs.get(FAIL_REASON_ATTR),
            retry_of=_opt(attrs.get(RETRY_OF_ATTR), int),
            resumed_from_epoch=_opt(attrs.get(RESUMED_FROM_EPOCH_ATTR), int),
            resume_skipped=attrs.get(RESUME_SKIPPED_ATTR), reused_epochs=_opt(attrs.get(REUSED_EPOCHS_ATTR), int),
            forked_from=attrs.get(FORKED_FROM_ATTR), fork_skipped=attrs.get(FORK_SKIPPED_ATTR),
            snapshot_skipped=attrs.get(SNAPSHOT_SKIPPED_ATTR),
            train_flops_spent=_opt(attrs.get(TRAIN_FLOPS_SPENT_ATTR), int),
            reused_seconds=_opt(attrs.get(REUSED_SECONDS_ATTR), float))

    @classmethod
    def from_trial(cls, trial: Any) -> TrialRecord:
        """From an Optuna ``FrozenTrial`` (or anything with ``user_attrs`` and ``number``)."""
        return cls.from_attrs(trial.user_attrs, f"trial {getattr(trial, 'number', '?')}")


# the attrs of a run, not of the trial it runs: a retry starts without them (``study.retries``)
RUN_ATTRS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name != BASELINE_ATTR) + (
    COMPRESSION_PARAMS_ATTR, COMPRESSION_FLOPS_ATTR)


def set_attrs(trial: Any, record: TrialRecord) -> None:
    """Write ``record.to_attrs()`` into a live Optuna ``trial`` (``set_user_attr`` per attr)."""
    for key, value in record.to_attrs().items():
        trial.set_user_attr(key, value)
