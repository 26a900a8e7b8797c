"""The report's analysis, as pure functions on plain values: compute -> small data object -> render.

- ``pareto_mask``: which points are on the Pareto front, feasibility and NaN respected;
- ``trial_rows``: every trial as a flat row, with its savings against the baseline and its controls;
- ``views``: the 2-D views of the front (accuracy vs inference cost, accuracy vs training compute,
  inference cost vs training compute) as lists of points;
- ``layer_profile``: a trial's widths per layer before and after, and its densities over the epochs.

Conventions (as in the trainer's ``summary.json``): accuracies are fractions in [0, 1]; ``params`` and
``flops`` (inference FLOPs per image) describe the final network; ``train_flops_cum`` is the training
FLOPs of the whole run. Against the baseline (the dense trial of the same study,
``study.pareto.completed_baseline``), ``adprune_core.records.Savings`` (the one formula):
``accuracy_change = val_top1 - baseline val_top1`` (a fraction; negative = lost accuracy),
``compression_params = baseline params / params`` and ``compression_flops`` likewise (x, > 1 = smaller),
``train_compute_reduction = baseline train_flops_cum / train_flops_cum`` (x, > 1 = cheaper to train).
``test_top1`` (the dataset's evaluation split, measured once at the end of a run; never an objective)
sits beside ``val_top1``: ``val_test_gap = val_top1 - test_top1`` (> 0: the search's accuracy is optimistic).

A control (``adprune control``) is compared with the trial it controls, over seeds (``reports.seeds``):
``control_summaries`` takes the latest run per (kind, seed); the trial's own result is the mean over the
trial and its ``repeat`` runs (its config with other seeds), and
``val_top1_gain_vs_<kind> = that mean - the control's mean val_top1`` (> 0: pruning in training paid).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adprune_core.records import Savings
from reports.seeds import Difference, SeedStats, compare, seed_stats
from study.pareto import pareto_front

ACCURACY = "val_top1"
TEST_ACCURACY = "test_top1"  # reported beside val_top1, never an objective
COST_METRICS = ("params", "flops", "train_flops_cum")
METRICS = (ACCURACY, *COST_METRICS)  # what a study may optimise
REPORTED = (*METRICS, TEST_ACCURACY)  # what the report reads of a trial or a control
CONTROL_KINDS = ("scratch", "uniform", "random", "repeat")
CONTROL_LABELS = {"scratch": "scratch: the final widths, trained from scratch",
                  "uniform": "uniform: one width multiplier, the same FLOPs",
                  "random": "random: the same widths at the same epochs, channels chosen at random",
                  "repeat": "pruned in training: the trial's config over seeds (the trial + repeats)"}
CONTROL_QUESTIONS = {"scratch": "does pruning in training beat training its final architecture from scratch?",
                     "uniform": "does the per-layer sizing beat a uniform width of the same FLOPs?",
                     "random": "does the trial's channel choice beat random channels at the same widths?"}


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pareto_mask(points: Sequence[Sequence[float]], directions: Sequence[str],
                feasible: Sequence[bool] | None = None) -> list[bool]:
    """Whether each point is on the Pareto front of the eligible points, in input order.

    Eligible: feasible (default: all) and every value finite. Ineligible points are never on the front
    and dominate nothing. Equal points do not dominate each other, so duplicates on the front all stay
    (Optuna's rule, ``study.pareto.pareto_front``).
    """
    feasible = [True] * len(points) if feasible is None else list(feasible)
    if len(feasible) != len(points):
        raise ValueError(f"{len(points)} points but {len(feasible)} feasibility flags")
    eligible = [i for i, p in enumerate(points) if feasible[i] and all(finite(v) for v in p)]
    on_front = {eligible[k] for k in pareto_front([points[i] for i in eligible], directions)}
    return [i in on_front for i in range(len(points))]


# --- trials as rows ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialInput:
    """What the report needs of one trial (``reports.load`` fills it from Optuna and MLflow).

    ``metrics``: the trainer's final metrics (``val_top1``, ``test_top1``, ``params``, ``flops``,
    ``train_flops_cum``; missing for trials that never ran); ``values``: the Optuna objective values
    (COMPLETE trials only).
    """

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    baseline: bool = False
    seed: int | None = None  # train.seed of the trial's config
    values: tuple[float, ...] | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    feasible: bool = True
    stop_reason: str | None = None
    fail_reason: str | None = None
    run_id: str | None = None
    url: str | None = None
    picked: bool = False
    reused_epochs: int = 0  # shared prefixes (study/sharing.py): epochs taken from a snapshot
    train_flops_spent: float = math.nan  # training FLOPs the trial computed itself (train_flops_cum less reused)
    forked_from: str | None = None
    never_pruned: bool = False  # a searched trial that ended without a cut (also infeasible: ``feasible`` False)


@dataclass(frozen=True)
class ControlInput:
    """A control run (tag ``adprune.role=control``): trial ``control_of`` retrained as ``kind`` with
    ``train.seed`` ``seed`` (None: a run from before controls had seeds)."""

    control_of: int
    kind: str  # scratch | uniform | random | repeat
    metrics: Mapping[str, float]
    run_id: str
    url: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ControlSummary:
    """One kind of control of one trial over its seeds, and the trial (over its own seeds) minus it.

    For ``repeat``, ``stats`` is the trial's own result over seeds (the trial and its repeat runs) and
    ``vs_trial`` is empty."""

    trial: int
    kind: str
    stats: SeedStats
    runs: tuple[ControlInput, ...]  # the latest run per seed, by seed
    vs_trial: Mapping[str, Difference] = field(default_factory=dict)  # metric -> trial minus control


def trial_seed_stats(trial: TrialInput, controls: Sequence[ControlInput]) -> SeedStats:
    """The trial's result over seeds: its own final metrics and its ``repeat`` controls' (the latest run per
    seed; a repeat with the trial's own seed does not count twice)."""
    repeats = _latest_per_seed(c for c in controls if c.control_of == trial.number and c.kind == "repeat"
                               and (c.seed is None or c.seed != trial.seed))
    return seed_stats([trial.metrics, *(c.metrics for c in repeats)], REPORTED,
                      (trial.seed, *(c.seed for c in repeats)))


def control_summaries(trial: TrialInput, controls: Sequence[ControlInput]) -> dict[str, ControlSummary]:
    """Kind -> ``ControlSummary`` for every kind of control ``trial`` has (``controls`` oldest first: a
    later run of the same kind and seed replaces an earlier one). The differences compare ``val_top1``
    and ``test_top1`` of the trial's seeds with the control's (``reports.seeds.compare``)."""
    mine = [c for c in controls if c.control_of == trial.number]
    own = trial_seed_stats(trial, mine)
    out = {}
    for kind in _kinds(mine):
        runs = _latest_per_seed(c for c in mine if c.kind == kind)
        if kind == "repeat":
            out[kind] = ControlSummary(trial.number, kind, own, runs)
            continue
        stats = seed_stats([c.metrics for c in runs], REPORTED, [c.seed for c in runs])
        out[kind] = ControlSummary(trial.number, kind, stats, runs,
                                   {m: compare(own, stats, m) for m in (ACCURACY, TEST_ACCURACY)})
    return out


def _latest_per_seed(controls: Any) -> tuple[ControlInput, ...]:
    """The latest finished run (one with a final ``val_top1``) per seed, by seed."""
    latest = {c.seed: c for c in controls if finite(c.metrics.get(ACCURACY))}  # later runs replace earlier ones
    return tuple(latest[s] for s in sorted(latest, key=lambda s: (s is None, s if s is not None else 0)))


def _kinds(controls: Sequence[ControlInput]) -> list[str]:
    kinds = [k for k in CONTROL_KINDS if any(c.kind == k for c in controls)]
    return kinds + sorted({c.kind for c in controls} - set(kinds))


def trial_rows(trials: Sequence[TrialInput], names: Sequence[str], directions: Sequence[str],
               controls: Sequence[ControlInput] = (), baseline: int | None = None) -> list[dict[str, Any]]:
    """Every trial as a flat row (the columns of ``trials.csv``), by trial number.

    Columns: ``number``, ``state``, ``baseline``, ``feasible``, ``never_pruned`` (a searched trial that
    made no cut; it is infeasible too), ``pareto`` (on the front of the COMPLETE
    feasible trials' objective values), the objective values under their names, the other final
    metrics (``test_top1`` among them), ``val_test_gap``, the savings (module docstring; metrics and savings
    only for COMPLETE trials, a stopped run's numbers being partial), ``search.<key>`` per searched key,
    ``stop_reason``, ``fail_reason``, ``picked``, ``mlflow_run_id``, ``mlflow_url``, ``reused_epochs``,
    ``train_flops_spent``, ``forked_from`` (shared prefixes, every trial that ran), and per control kind
    present (``control_summaries``: means over seeds) ``<kind>_seeds``, ``<kind>_val_top1``,
    ``<kind>_val_top1_sd``, ``<kind>_test_top1``, ``<kind>_test_top1_sd``, ``<kind>_flops``,
    ``<kind>_train_flops_cum``, ``val_top1_gain_vs_<kind>`` (the trial's seeds minus the control's; not for
    ``repeat``), ``<kind>_run_id``, ``<kind>_url`` (the latest run of that kind). ``baseline``: the number of
    the study's completed baseline (``study.pareto.completed_baseline``); None: the savings are NaN.
    """
    trials = sorted(trials, key=lambda t: t.number)
    base = next((t for t in trials if t.number == baseline), None)
    points = [t.values if t.state == "COMPLETE" and t.values else [math.nan] * len(names) for t in trials]
    on_front = pareto_mask(points, directions, [t.feasible for t in trials])
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    kinds = _kinds(controls)
    latest = {(c.control_of, c.kind): c for c in controls}  # later controls replace earlier ones
    rows = []
    for t, point, pareto in zip(trials, points, on_front):
        metrics = t.metrics if t.state == "COMPLETE" else {}  # a stopped run's numbers are partial
        row: dict[str, Any] = {"number": t.number, "state": t.state, "baseline": t.baseline,
                               "feasible": t.feasible, "never_pruned": t.never_pruned, "pareto": pareto}
        row.update(dict(zip(names, point)))
        row.update({m: float(metrics[m]) if finite(metrics.get(m)) else math.nan for m in REPORTED if m not in names})
        row["val_test_gap"] = (float(metrics[ACCURACY]) - float(metrics[TEST_ACCURACY])
                               if finite(metrics.get(ACCURACY)) and finite(metrics.get(TEST_ACCURACY)) else math.nan)
        row.update(Savings.of(metrics, base.metrics if base else None).to_dict())
        row.update({f"search.{k}": t.params.get(k) for k in keys})
        row.update({"stop_reason": t.stop_reason, "fail_reason": t.fail_reason, "picked": t.picked,
                    "mlflow_run_id": t.run_id, "mlflow_url": t.url, "reused_epochs": t.reused_epochs,
                    "train_flops_spent": t.train_flops_spent, "forked_from": t.forked_from})
        summaries = control_summaries(t, controls) if t.state == "COMPLETE" else {}
        for kind in kinds:
            c, s = latest.get((t.number, kind)), summaries.get(kind)
            row[f"{kind}_seeds"] = s.stats.n if s else 0
            for metric in (ACCURACY, TEST_ACCURACY, "flops", "train_flops_cum"):
                mean, sd, _ = s.stats.get(metric) if s else (math.nan, math.nan, 0)
                row[f"{kind}_{metric}"] = mean
                if metric in (ACCURACY, TEST_ACCURACY):
                    row[f"{kind}_{metric}_sd"] = sd
            if kind != "repeat":
                row[f"val_top1_gain_vs_{kind}"] = s.vs_trial[ACCURACY].diff if s else math.nan
            row[f"{kind}_run_id"], row[f"{kind}_url"] = (c.run_id, c.url) if c else (None, None)
        rows.append(row)
    return rows


# --- the 2-D views -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewPoint:
    """One marker of a 2-D view: a COMPLETE trial or a control run."""

    x: float
    y: float
    number: int  # the trial (for a control: the trial it controls)
    pareto: bool = False  # on the (all-objective) Pareto front
    baseline: bool = False
    feasible: bool = True
    never_pruned: bool = False
    control: str | None = None  # the control kind, None for a trial
    run_id: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class View:
    x: str  # metric name on the x axis
    y: str
    points: tuple[ViewPoint, ...]


def view_axes(names: Sequence[str]) -> list[tuple[str, str]]:
    """The (x, y) metric pairs of the 2-D views: every pair of objectives, accuracy on y when present,
    inference cost on y against training compute. For (val_top1, flops, train_flops_cum):
    (flops, val_top1), (train_flops_cum, val_top1), (train_flops_cum, flops)."""
    order = {ACCURACY: 0, "params": 1, "flops": 1, "train_flops_cum": 2}
    ranked = sorted(names, key=lambda n: order.get(n, 3))
    return [(ranked[j], ranked[i]) for i in range(len(ranked)) for j in range(i + 1, len(ranked))]


def views(rows: Sequence[Mapping[str, Any]], names: Sequence[str],
          controls: Sequence[ControlInput] = ()) -> list[View]:
    """The 2-D views from ``trial_rows`` output: every COMPLETE trial whose two values are finite, and
    every control run with both metrics (at its own metrics, numbered by the trial it controls)."""
    out = []
    for x, y in view_axes(names):
        pts = [ViewPoint(float(r[x]), float(r[y]), r["number"], bool(r["pareto"]), bool(r["baseline"]),
                         bool(r["feasible"]), bool(r.get("never_pruned")), None, r.get("mlflow_run_id"),
                         r.get("mlflow_url"))
               for r in rows if r["state"] == "COMPLETE" and finite(r.get(x)) and finite(r.get(y))]
        pts += [ViewPoint(float(c.metrics[x]), float(c.metrics[y]), c.control_of, control=c.kind,
                          run_id=c.run_id, url=c.url)
                for c in controls if finite(c.metrics.get(x)) and finite(c.metrics.get(y))]
        out.append(View(x, y, tuple(pts)))
    return out


# --- one trial's layers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerProfile:
    """A trial's layers: width trained in the first epoch (dense, for a pruning trial) and in the last
    (final), channels; activation density per epoch (NaN where a layer was not measured)."""

    number: int
    layers: tuple[str, ...]
    width_dense: tuple[int, ...]
    width_final: tuple[int, ...]
    epochs: tuple[int, ...]
    density: Mapping[str, tuple[float, ...]]
    prune_epochs: tuple[int, ...] = ()


def layer_profile(number: int, epochs: Sequence[Mapping[str, Any]],
                  prune_epochs: Sequence[int] = ()) -> LayerProfile | None:
    """From per-epoch records (``summary.json``'s ``epochs``: ``epoch``, ``widths``, ``densities``);
    None when there are none. A layer missing from the first or last record gets width 0."""
    if not epochs:
        return None
    layers = tuple(dict.fromkeys(k for r in epochs for k in (*r.get("widths", {}), *r.get("densities", {}))))
    first, last = epochs[0].get("widths", {}), epochs[-1].get("widths", {})
    return LayerProfile(
        number=number, layers=layers,
        width_dense=tuple(int(first.get(k, 0)) for k in layers),
        width_final=tuple(int(last.get(k, 0)) for k in layers),
        epochs=tuple(int(r["epoch"]) for r in epochs),
        density={k: tuple(float(r.get("densities", {}).get(k, math.nan)) for r in epochs) for k in layers},
        prune_epochs=tuple(prune_epochs))
