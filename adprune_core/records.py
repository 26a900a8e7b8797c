"""What a training run records, as typed frozen data: the records that cross the package boundaries.

- ``EpochRecord``: one finished epoch (losses, accuracies as fractions in [0, 1], layer densities, widths,
  params, inference FLOPs per image, training FLOPs so far, wall seconds);
- ``PruneEvent``: one cut (widths and costs before/after, kept channel indices per group, the decision per
  group ``GroupDecision``, the batch-norm re-estimation ``BnRecalibration``, top-1 right after the cut);
- ``FinalMetrics``: the run's end point (status, final costs, dense costs; the compression ratios are
  properties, dense / final);
- ``RunSummary``: the content of ``summary.json`` (the resolved config, the dataset, the records, the final
  metrics, and what a fork, a resume or the snapshot store did), with ``to_dict``/``from_dict``,
  ``write`` (atomic) and ``read`` (a one-line ``RecordError`` naming the file, the problem and the fix);
- ``Savings``: THE formula of every number measured against the dense baseline. Sign convention: positive
  is better than the baseline (``accuracy_change`` > 0: more accurate; the ratios > 1: smaller/cheaper).

``to_dict`` writes the same keys ``summary.json`` always had (plus ``schema_version``), so a record read
from JSON and written again is unchanged. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adprune_core.errors import ADPruneError
from adprune_core.files import atomic_write

SCHEMA_VERSION = 1
SUMMARY_FILE = "summary.json"


class RecordError(ADPruneError):
    """A run record (``summary.json``) that is missing, not JSON, of another schema version or lacks a field."""


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise RecordError(f"{where} is {type(d).__name__}, not an object")
    if key not in d:
        raise RecordError(f"{where} lacks the field {key!r}")
    return d[key]


@dataclass(frozen=True)
class EpochRecord:
    """Epoch ``epoch`` (1-based), measured after its training and evaluation (before its prune decision,
    except ``seconds``, which includes the cut)."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_top1: float
    densities: Mapping[str, float]  # prunable layer -> activation density of this epoch
    widths: Mapping[str, int]  # prunable layer -> output channels trained this epoch
    params: int
    flops: int  # inference FLOPs per image of the network trained this epoch
    train_flops_cum: int  # training FLOPs of the run up to the end of this epoch
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "lr": self.lr, "train_loss": self.train_loss, "train_top1": self.train_top1,
                "val_top1": self.val_top1, "densities": dict(self.densities), "widths": dict(self.widths),
                "params": self.params, "flops": self.flops, "train_flops_cum": self.train_flops_cum,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "epoch record") -> EpochRecord:
        return cls(epoch=int(_need(d, "epoch", where)), lr=float(_need(d, "lr", where)),
                   train_loss=float(_need(d, "train_loss", where)), train_top1=float(_need(d, "train_top1", where)),
                   val_top1=float(_need(d, "val_top1", where)),
                   densities={k: float(v) for k, v in _need(d, "densities", where).items()},
                   widths={k: int(v) for k, v in _need(d, "widths", where).items()},
                   params=int(_need(d, "params", where)), flops=int(_need(d, "flops", where)),
                   train_flops_cum=int(_need(d, "train_flops_cum", where)), seconds=float(_need(d, "seconds", where)))


@dataclass(frozen=True)
class GroupDecision:
    """What decided one group's width at a cut: its group density (``prune.group_density``), its width
    before, and under ``width_rule=threshold`` ``at_threshold`` (channels at or above the threshold), or
    ``planned_width`` when a width plan was replayed."""

    density: float
    width_before: int
    at_threshold: int | None = None
    planned_width: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"density": self.density, "width_before": self.width_before}
        if self.planned_width is not None:
            out["planned_width"] = self.planned_width
        if self.at_threshold is not None:
            out["at_threshold"] = self.at_threshold
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "group decision") -> GroupDecision:
        return cls(float(_need(d, "density", where)), int(_need(d, "width_before", where)),
                   None if d.get("at_threshold") is None else int(d["at_threshold"]),
                   None if d.get("planned_width") is None else int(d["planned_width"]))


@dataclass(frozen=True)
class BnRecalibration:
    """The batch-norm re-estimation after a cut: images used (0 = none), their forward FLOPs (counted in
    ``train_flops_cum``), and top-1 before it (with the inherited statistics; None without re-estimation)."""

    images: int = 0
    flops: int = 0
    val_top1_before: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": self.images, "flops": self.flops}
        if self.val_top1_before is not None:
            out["val_top1_before"] = self.val_top1_before
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "bn_recalibration") -> BnRecalibration:
        before = d.get("val_top1_before")
        return cls(int(_need(d, "images", where)), int(_need(d, "flops", where)),
                   None if before is None else float(before))


@dataclass(frozen=True)
class PruneEvent:
    """One cut, decided after epoch ``epoch``."""

    epoch: int
    densities: Mapping[str, float]
    widths_before: Mapping[str, int]
    widths_after: Mapping[str, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    kept_idxs: Mapping[str, list[int]]  # group -> kept channel indices (sorted)
    groups: Mapping[str, GroupDecision]
    bn_recalibration: BnRecalibration
    val_top1_after_cut: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "densities": dict(self.densities), "widths_before": dict(self.widths_before),
                "widths_after": dict(self.widths_after), "params_before": self.params_before,
                "params_after": self.params_after, "flops_before": self.flops_before, "flops_after": self.flops_after,
                "kept_idxs": {g: list(idx) for g, idx in self.kept_idxs.items()},
                "groups": {g: d.to_dict() for g, d in self.groups.items()},
                "bn_recalibration": self.bn_recalibration.to_dict(), "val_top1_after_cut": self.val_top1_after_cut}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "prune event") -> PruneEvent:
        return cls(epoch=int(_need(d, "epoch", where)),
                   densities={k: float(v) for k, v in _need(d, "densities", where).items()},
                   widths_before={k: int(v) for k, v in _need(d, "widths_before", where).items()},
                   widths_after={k: int(v) for k, v in _need(d, "widths_after", where).items()},
                   params_before=int(_need(d, "params_before", where)),
                   params_after=int(_need(d, "params_after", where)),
                   flops_before=int(_need(d, "flops_before", where)), flops_after=int(_need(d, "flops_after", where)),
                   kept_idxs={g: [int(i) for i in idx] for g, idx in _need(d, "kept_idxs", where).items()},
                   groups={g: GroupDecision.from_dict(x, f"{where} group {g!r}")
                           for g, x in _need(d, "groups", where).items()},
                   bn_recalibration=BnRecalibration.from_dict(_need(d, "bn_recalibration", where)),
                   val_top1_after_cut=float(_need(d, "val_top1_after_cut", where)))


@dataclass(frozen=True)
class FinalMetrics:
    """The end of a run. ``status``: running | completed | stopped | diverged | interrupted | failed;
    ``test_top1`` only once a completed or stopped run has ended (None before)."""

    status: str
    epochs_run: int
    val_top1: float
    params: int
    flops: int
    train_flops_cum: int
    params_dense: int
    flops_dense: int
    prune_rounds: int
    stop_reason: str | None = None
    test_top1: float | None = None

    @property
    def compression_params(self) -> float:
        """Dense params / final params (x; > 1 = smaller)."""
        return self.params_dense / max(self.params, 1)

    @property
    def compression_flops(self) -> float:
        """Dense inference FLOPs / final inference FLOPs (x; > 1 = fewer)."""
        return self.flops_dense / max(self.flops, 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "epochs_run": self.epochs_run, "val_top1": self.val_top1, "params": self.params,
            "flops": self.flops, "train_flops_cum": self.train_flops_cum, "params_dense": self.params_dense,
            "flops_dense": self.flops_dense, "compression_params": self.compression_params,
            "compression_flops": self.compression_flops, "prune_rounds": self.prune_rounds}
        if self.stop_reason:
            out["stop_reason"] = self.stop_reason
        if self.test_top1 is not None:
            out["test_top1"] = self.test_top1
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "final") -> FinalMetrics:
        test = d.get("test_top1") if isinstance(d, Mapping) else None
        return cls(status=str(_need(d, "status", where)), epochs_run=int(_need(d, "epochs_run", where)),
                   val_top1=float(_need(d, "val_top1", where)), params=int(_need(d, "params", where)),
                   flops=int(_need(d, "flops", where)), train_flops_cum=int(_need(d, "train_flops_cum", where)),
                   params_dense=int(_need(d, "params_dense", where)), flops_dense=int(_need(d, "flops_dense", where)),
                   prune_rounds=int(_need(d, "prune_rounds", where)), stop_reason=d.get("stop_reason") or None,
                   test_top1=None if test is None else float(test))

    def with_status(self, status: str) -> FinalMetrics:
        return replace(self, status=status)


# Optional keys of summary.json, written only when set: the field name is the JSON key.
_OPTIONAL = ("fork_skipped", "width_plan", "resumed_from_epoch", "forked_from", "snapshots_written",
             "snapshot_skipped")


@dataclass(frozen=True)
class RunSummary:
    """The record of one run (``summary.json``). ``final`` is None until the first epoch has ended.

    ``forked_from``: the snapshot a forked run started from (``snapshots.Fork.provenance``: ``epoch``, ``key``,
    ``written_by``, ``train_flops_cum``, ``seconds``); ``fork_skipped``/``snapshot_skipped``: why a fork or a
    snapshot did not happen; ``resumed_from_epoch``: the checkpoint's epoch a resumed run continued after."""

    config: Mapping[str, Any]
    dataset: Mapping[str, Any] = field(default_factory=dict)
    device: str = ""
    init_widths: Mapping[str, int] = field(default_factory=dict)
    epochs: tuple[EpochRecord, ...] = ()
    prune_events: tuple[PruneEvent, ...] = ()
    final: FinalMetrics | None = None
    fork_skipped: str | None = None
    width_plan: Mapping[str, Mapping[str, int]] | None = None
    resumed_from_epoch: int | None = None
    forked_from: Mapping[str, Any] | None = None
    snapshots_written: tuple[int, ...] = ()
    snapshot_skipped: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version, "config": dict(self.config), "dataset": dict(self.dataset),
            "device": self.device, "init_widths": dict(self.init_widths),
            "epochs": [r.to_dict() for r in self.epochs], "prune_events": [e.to_dict() for e in self.prune_events],
            "final": self.final.to_dict() if self.final is not None else {}}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "run summary") -> RunSummary:
        version = _need(d, "schema_version", where)
        if version != SCHEMA_VERSION:
            raise RecordError(f"{where} has schema_version {version!r}, this version reads {SCHEMA_VERSION}")
        final = _need(d, "final", where)
        return cls(config=dict(_need(d, "config", where)), dataset=dict(d.get("dataset") or {}),
                   device=str(d.get("device", "")), init_widths=dict(d.get("init_widths") or {}),
                   epochs=tuple(EpochRecord.from_dict(r, f"{where} epochs[{i}]")
                                for i, r in enumerate(_need(d, "epochs", where))),
                   prune_events=tuple(PruneEvent.from_dict(e, f"{where} prune_events[{i}]")
                                      for i, e in enumerate(_need(d, "prune_events", where))),
                   final=FinalMetrics.from_dict(final, f"{where} final") if final else None,
                   fork_skipped=d.get("fork_skipped"), width_plan=d.get("width_plan"),
                   resumed_from_epoch=d.get("resumed_from_epoch"), forked_from=d.get("forked_from"),
                   snapshots_written=tuple(int(e) for e in d.get("snapshots_written") or ()),
                   snapshot_skipped=d.get("snapshot_skipped"))

    def with_status(self, status: str) -> RunSummary:
        """This summary with ``final.status`` = ``status`` (unchanged when there is no final yet)."""
        return self if self.final is None else replace(self, final=self.final.with_status(status))

    def write(self, path: str | Path) -> None:
        """Write as JSON, atomically (temp file + rename): a reader never sees a half-written file."""
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """The summary at ``path`` (a file, or a run folder holding ``summary.json``); ``RecordError`` in one
        line naming the file, the problem and the fix."""
        path = Path(path)
        if path.is_dir():
            path = path / SUMMARY_FILE
        fix = "re-run the training, or restore the file from the run's MLflow artifact summary.json"
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise RecordError(f"{path}: no such file; is this a run folder? {fix}") from None
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            problem = " ".join(str(exc).split())[:120]
            raise RecordError(f"{path}: not a JSON run summary ({type(exc).__name__}: {problem}); {fix}") from None
        try:
            return cls.from_dict(raw, str(path))
        except RecordError as exc:
            raise RecordError(f"{exc}; {fix}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"{path}: a field has the wrong type ({type(exc).__name__}: {exc}); {fix}") from None


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file + rename): readers never see a half-written file."""
    text = json.dumps(payload, indent=2, default=float)
    atomic_write(path, lambda tmp: tmp.write_text(text))


# --- numbers against the baseline ------------------------------------------------------------------

def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _ratio(numerator: Any, denominator: Any) -> float:
    return numerator / denominator if _finite(numerator) and _finite(denominator) and denominator != 0 else math.nan


def _metrics(m: FinalMetrics | Mapping[str, Any] | None) -> Mapping[str, Any]:
    return {} if m is None else m.to_dict() if isinstance(m, FinalMetrics) else m


@dataclass(frozen=True)
class Savings:
    """A run's end point against the dense baseline's; positive / above 1 = better than the baseline.

    ``accuracy_change`` = val_top1 - baseline val_top1 (a fraction), ``test_accuracy_change`` likewise for
    test_top1; ``compression_params`` = baseline params / params, ``compression_flops`` likewise (x, > 1 =
    smaller); ``train_compute_reduction`` = baseline train_flops_cum / train_flops_cum (x, > 1 = cheaper to
    train). A number whose inputs are missing or not finite (or a zero denominator) is NaN."""

    accuracy_change: float
    test_accuracy_change: float
    compression_params: float
    compression_flops: float
    train_compute_reduction: float

    @property
    def accuracy_drop(self) -> float:
        """Baseline val_top1 - val_top1 (> 0: less accurate): the study's constraint reads it this way round."""
        return -self.accuracy_change

    @classmethod
    def of(cls, metrics: FinalMetrics | Mapping[str, Any],
           baseline: FinalMetrics | Mapping[str, Any] | None) -> Savings:
        """From final metrics (``FinalMetrics`` or a mapping with ``val_top1``, ``test_top1``, ``params``,
        ``flops``, ``train_flops_cum``) and the baseline's (None: every number NaN)."""
        m, b = _metrics(metrics), _metrics(baseline)

        def change(key: str) -> float:
            return float(m[key]) - float(b[key]) if _finite(m.get(key)) and _finite(b.get(key)) else math.nan

        return cls(accuracy_change=change("val_top1"), test_accuracy_change=change("test_top1"),
                   compression_params=_ratio(b.get("params"), m.get("params")),
                   compression_flops=_ratio(b.get("flops"), m.get("flops")),
                   train_compute_reduction=_ratio(b.get("train_flops_cum"), m.get("train_flops_cum")))

    def to_dict(self) -> dict[str, float]:
        return {"accuracy_change": self.accuracy_change, "test_accuracy_change": self.test_accuracy_change,
                "compression_params": self.compression_params, "compression_flops": self.compression_flops,
                "train_compute_reduction": self.train_compute_reduction}
