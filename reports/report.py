"""Compute a study's report: ``StudyRuns`` (``reports.load``) -> ``Report``, a plain data object that
``reports.render`` writes out. Nothing here draws or writes files.

What goes in, and where each number comes from, is documented in ``docs/report.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adprune_core.records import Savings
from reports import health
from reports.health import EdgeHit, HypervolumeScale, Importances
from reports.load import StudyRuns, control_inputs, trial_history, trial_inputs
from reports.pareto import (
    ControlInput,
    ControlSummary,
    LayerProfile,
    View,
    control_summaries,
    layer_profile,
    trial_rows,
    views,
)
from study.pareto import completed_baseline
from study.sharing import SharingTotals, sharing_totals
from study.space import key_limits
from study.trial_record import TrialRecord

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class Report:
    """Everything the report shows. ``rows``: ``reports.pareto.trial_rows`` (the columns of ``trials.csv``)."""

    study: str
    names: tuple[str, ...]
    directions: tuple[str, ...]
    rows: list[dict[str, Any]]
    pareto: list[int]  # trial numbers on the front, ascending
    baseline: int | None  # the completed baseline's trial number
    views: list[View]
    controls: list[ControlInput]
    control_savings: dict[str, dict[str, float]]  # control run id -> savings against the baseline
    summaries: dict[int, dict[str, ControlSummary]]  # controlled COMPLETE trial -> kind -> over its seeds
    profiles: dict[int, LayerProfile]  # Pareto trial -> its layers
    profile_sources: dict[int, str]  # Pareto trial -> where its history was read
    states: dict[str, int]
    infeasible: int  # COMPLETE trials that broke the accuracy constraint
    never_pruned: int  # COMPLETE searched trials that made no cut (the baseline's network again)
    hv_scale: HypervolumeScale
    hv_history: list[tuple[int, float]]  # (trial number, hypervolume after it)
    importances: Importances
    edges: list[EdgeHit]
    experiment_id: str | None = None
    parent_run_id: str | None = None
    mlflow_url: str = ""
    picked: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = ""
    sharing: SharingTotals | None = None  # shared prefixes over the finished trials (study/sharing.py)

    def row(self, number: int) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["number"] == number), None)

    def controls_of(self, number: int) -> list[ControlInput]:
        return [c for c in self.controls if c.control_of == number]

    @property
    def baseline_metrics(self) -> dict[str, float] | None:
        """The baseline's final metrics as in its row (val_top1, test_top1, params, ...), or None."""
        row = self.row(self.baseline) if self.baseline is not None else None
        return {k: row[k] for k in ("val_top1", "test_top1", "params", "flops", "train_flops_cum") if k in row} \
            if row else None


def build_report(data: StudyRuns) -> Report:
    """The report of ``data``; reads the Pareto trials' histories (``reports.load.trial_history``)."""
    inputs = trial_inputs(data)
    controls = control_inputs(data)
    found = completed_baseline(data.trials)
    base = next((t for t in inputs if found is not None and t.number == found.number), None)
    rows = trial_rows(inputs, data.names, data.directions, controls, baseline=found.number if found else None)
    pareto = [r["number"] for r in rows if r["pareto"]]
    by_number = {t.number: t for t in data.trials}

    profiles, sources = {}, {}
    for number in pareto:
        epochs, prunes, source = trial_history(data, by_number[number])
        profile = layer_profile(number, epochs, prunes)
        if profile is not None:
            profiles[number], sources[number] = profile, source
        else:
            data.notes.append(f"trial {number}: no per-epoch history (no summary.json, no MLflow metrics)")

    # from the trials' inputs (state, values and feasibility as read once by trial_inputs), in trial order
    complete = [t for t in inputs if t.state == "COMPLETE" and t.values]
    points = [list(t.values) if t.state == "COMPLETE" and t.values else [float("nan")] * len(data.names)
              for t in inputs]
    scale = health.hypervolume_scale(data.names, list(base.values) if base and base.values else None,
                                     [list(t.values) for t in complete if t.feasible])
    eligible = [t.state == "COMPLETE" and t.feasible for t in inputs]
    history = health.hypervolume_history([t.number for t in inputs], points, eligible, data.directions, scale)
    limits = key_limits({k for t in data.trials for k in t.params})
    edges = [hit for number in pareto if not TrialRecord.from_trial(by_number[number]).baseline
             for hit in health.edge_hits(number, by_number[number].params, by_number[number].distributions,
                                         limits=limits)]
    counts = Counter(t.state for t in inputs)
    return Report(
        study=data.name, names=data.names, directions=data.directions, rows=rows, pareto=pareto,
        baseline=base.number if base else None, views=views(rows, data.names, controls), controls=controls,
        control_savings={c.run_id: Savings.of(c.metrics, base.metrics if base else None).to_dict() for c in controls},
        summaries={t.number: control_summaries(t, controls) for t in inputs
                   if t.state == "COMPLETE" and any(c.control_of == t.number for c in controls)},
        profiles=profiles, profile_sources=sources,
        states={s: counts.get(s, 0) for s in STATES if counts.get(s, 0) or s in STATES[:3]},
        infeasible=sum(not t.feasible and not t.never_pruned for t in complete),
        never_pruned=sum(t.never_pruned for t in complete), hv_scale=scale, hv_history=history,
        importances=health.param_importances(data.trials, data.names, data.directions), edges=edges,
        experiment_id=data.experiment_id, parent_run_id=data.parent_run_id, mlflow_url=data.mlflow_url,
        picked=sorted(data.picked), notes=list(data.notes) + _baseline_notes(base),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        sharing=sharing_totals(t for t in data.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")))


def _baseline_notes(base: Any) -> list[str]:
    if base is None:
        return ["no completed baseline trial: accuracy changes, compression and compute reductions are blank, "
                "and the hypervolume is normalised by the largest values instead"]
    return []
