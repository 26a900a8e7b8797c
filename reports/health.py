"""The study's health: trials by state, hypervolume over trials, parameter importances, edge warnings.

**Hypervolume.** Objectives are normalised so that the number reads the same for every model and
dataset: each cost (``params``, ``flops``, ``train_flops_cum``) is divided by the baseline's (so the
dense baseline sits at 1), ``val_top1`` stays a fraction. The reference point is accuracy 0 and each
normalised cost 1.1 (the baseline's cost x 1.1); the hypervolume is the part of the box between the
ideal point (accuracy 1, cost 0) and the reference point that the front dominates, a number in [0, 1]
(the baseline alone, with accuracy a, scores a x 0.1^k / 1.1^k for k cost objectives: small; a
front that keeps the accuracy at a tenth of the cost scores near a). Points beyond the reference
point add nothing. Without a completed baseline the costs are divided by their largest value among
the feasible COMPLETE trials instead (``HypervolumeScale.source`` says which).
Computed with Optuna's ``optuna._hypervolume.compute_hypervolume`` (WFG) after each trial, on the
feasible COMPLETE trials up to and including it.

**Importances.** ``optuna.importance.get_param_importances`` (fANOVA, seed 0) per objective, on the
COMPLETE non-baseline trials (the baseline has no params); with fewer than ``MIN_TRIALS_FOR_IMPORTANCE``
of them, or no parameter common to all of them, the answer is "not enough trials".

**Edge warnings.** A Pareto trial whose searched numeric value lies within ``EDGE_FRACTION`` (2%) of
the span of its range from the low or high end (on the log scale for log ranges) suggests that the
range cuts off better values: widen it, on that side. An end that already sits at the key's own limit
(``prune.patience`` and ``prune.rounds`` start at 1, ``prune.channel_density_min`` at 0) cannot be
widened and gives no warning. Categorical parameters are never on an edge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reports.pareto import ACCURACY, finite
from study.trial_record import TrialRecord

REFERENCE_FACTOR = 1.1  # the reference cost, as a multiple of the baseline's
EDGE_FRACTION = 0.02
MIN_TRIALS_FOR_IMPORTANCE = 4
NOT_ENOUGH = "not enough trials"


# --- hypervolume -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HypervolumeScale:
    """Per objective: the value that normalises it to 1 and where that value came from."""

    scale: tuple[float, ...]
    source: str  # "baseline" or "largest value"


def hypervolume_scale(names: Sequence[str], baseline: Sequence[float] | None,
                      points: Sequence[Sequence[float]]) -> HypervolumeScale:
    """Scales for ``normalised_losses``: 1 for accuracy, the baseline's value (else the largest finite
    value among ``points``, else 1) for a cost."""
    if baseline is not None and all(finite(b) and b > 0 for n, b in zip(names, baseline) if n != ACCURACY):
        return HypervolumeScale(tuple(1.0 if n == ACCURACY else float(b) for n, b in zip(names, baseline)), "baseline")
    scale = []
    for i, n in enumerate(names):
        seen = [abs(p[i]) for p in points if finite(p[i]) and p[i] != 0]
        scale.append(1.0 if n == ACCURACY or not seen else max(seen))
    return HypervolumeScale(tuple(scale), "largest value")


def reference_point(directions: Sequence[str]) -> np.ndarray:
    """In loss space (everything minimised, normalised): 0 for a maximised objective (accuracy 0),
    ``REFERENCE_FACTOR`` for a minimised one."""
    return np.array([0.0 if d == "maximize" else REFERENCE_FACTOR for d in directions])


def ideal_point(directions: Sequence[str]) -> np.ndarray:
    """The box's other corner: -1 (accuracy 1) for a maximised objective, 0 (free) for a minimised one."""
    return np.array([-1.0 if d == "maximize" else 0.0 for d in directions])


def normalised_losses(points: Sequence[Sequence[float]], directions: Sequence[str],
                      scale: HypervolumeScale) -> np.ndarray:
    """Points as losses: value / scale, negated when maximised. Shape (n, objectives)."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    arr = np.asarray(points, dtype=float).reshape(len(points), len(directions))
    return arr / np.asarray(scale.scale) * sign


def hypervolume(losses: np.ndarray, directions: Sequence[str]) -> float:
    """The fraction (in [0, 1]) of the box between the ideal and the reference point that ``losses``
    dominate; rows with a NaN or not strictly better than the reference in every objective add nothing."""
    from optuna._hypervolume import compute_hypervolume

    ref, ideal = reference_point(directions), ideal_point(directions)
    losses = np.asarray(losses, dtype=float).reshape(-1, len(directions))
    inside = losses[np.all(np.isfinite(losses), axis=1) & np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    inside = np.maximum(inside, ideal)  # accuracy above 1 cannot happen; keeps the fraction <= 1
    return float(compute_hypervolume(inside, ref) / np.prod(ref - ideal))


def hypervolume_history(numbers: Sequence[int], points: Sequence[Sequence[float]], eligible: Sequence[bool],
                        directions: Sequence[str], scale: HypervolumeScale) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the eligible points among trials <= that number), per trial in
    number order. ``eligible``: COMPLETE and feasible."""
    order = sorted(range(len(numbers)), key=lambda i: numbers[i])
    losses = normalised_losses([points[i] for i in order], directions, scale) if order else np.zeros((0, 0))
    history, kept = [], []
    for k, i in enumerate(order):
        if eligible[i]:
            kept.append(losses[k])
        history.append((numbers[i], hypervolume(np.array(kept), directions) if kept else 0.0))
    return history


# --- importances ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Importances:
    """Per objective name: parameter -> importance (summing to 1), or ``note`` when not computed."""

    by_objective: Mapping[str, Mapping[str, float]]
    note: str | None = None
    trials: int = 0


def param_importances(trials: Sequence[Any], names: Sequence[str], directions: Sequence[str],
                      min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> Importances:
    """fANOVA importances per objective over the COMPLETE non-baseline ``trials`` (Optuna FrozenTrials)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [t for t in trials if t.state.name == "COMPLETE" and not TrialRecord.from_trial(t).baseline and t.params
            and t.values and all(finite(v) for v in t.values)]
    if len(done) < min_trials:
        return Importances({}, f"{NOT_ENOUGH} ({len(done)} complete searched trials, need {min_trials})", len(done))
    common = set.intersection(*(set(t.params) for t in done))
    varied = [k for k in sorted(common) if len({repr(t.params[k]) for t in done}) > 1]
    if not varied:
        return Importances({}, f"{NOT_ENOUGH} (no searched parameter took two values in every trial)", len(done))
    study = optuna.create_study(directions=list(directions))
    study.add_trials(done)
    out = {}
    for i, name in enumerate(names):
        out[name] = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=varied,
                                          target=lambda t, i=i: t.values[i])
    return Importances(out, None, len(done))


# --- edges of the search space -------------------------------------------------------------------------

@dataclass(frozen=True)
class EdgeHit:
    number: int
    key: str
    value: float
    low: float
    high: float
    end: str  # "low" or "high"
    position: float  # where the value sits in [0, 1] along the range (log scale for log ranges)


def range_position(value: float, low: float, high: float, log: bool = False) -> float:
    """Where ``value`` sits along [low, high]: 0 at low, 1 at high (on the log scale when ``log``)."""
    if log and low > 0 and value > 0:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return 0.5 if high == low else (value - low) / (high - low)


def edge_hits(number: int, params: Mapping[str, Any], distributions: Mapping[str, Any],
              fraction: float = EDGE_FRACTION,
              limits: Mapping[str, tuple[float | None, float | None]] | None = None) -> list[EdgeHit]:
    """The searched numeric values of one trial that sit within ``fraction`` of an end of their range,
    where widening the range past that end could help.

    ``distributions``: key -> Optuna distribution (``trial.distributions``) or a mapping with ``low``,
    ``high`` and optional ``log`` (as in ``study_config.json``); anything without ``low``/``high``
    (categorical) is skipped, as is a range of one value. ``limits``: key -> (least, greatest) value the
    key allows (``study.space.key_limits``; None = unbounded): an end of the range that already sits at
    the key's own limit (``prune.patience`` low 1, ``prune.rounds`` low 1) is a natural end, not a hit.
    """
    hits = []
    for key, value in params.items():
        dist = distributions.get(key)
        spec = dist if isinstance(dist, Mapping) else vars(dist) if dist is not None else {}
        low, high = spec.get("low"), spec.get("high")
        if not (finite(low) and finite(high) and finite(value)) or high == low:
            continue
        pos = range_position(float(value), float(low), float(high), bool(spec.get("log")))
        if not (pos <= fraction or pos >= 1 - fraction):
            continue
        end = "low" if pos <= 0.5 else "high"
        least, greatest = (limits or {}).get(key, (None, None))
        at_limit = least if end == "low" else greatest
        if at_limit is not None and float(low if end == "low" else high) == float(at_limit):
            continue  # the range already reaches as far as the key allows on this side
        hits.append(EdgeHit(number, key, float(value), float(low), float(high), end, pos))
    return hits


def edge_warnings(hits: Sequence[EdgeHit]) -> list[str]:
    """One line per (parameter, end of its range): the trials and values there, the range, which way to
    widen it."""
    groups: dict[tuple[str, str, float, float], list[EdgeHit]] = {}
    for h in hits:
        groups.setdefault((h.key, h.end, h.low, h.high), []).append(h)
    lines = []
    for (key, end, low, high), group in groups.items():
        where = ", ".join(f"trial {h.number} ({h.value:.4g})" for h in group)
        way = f"lower its low end below {low:.4g}" if end == "low" else f"raise its high end above {high:.4g}"
        lines.append(f"{key} sits at the {end} end of its range [{low:.4g}, {high:.4g}] (within {EDGE_FRACTION:.0%} "
                     f"of the span) in Pareto-optimal {where}: better values may lie beyond it; widen the range "
                     f"({way}) in the study file's space and resume the study")
    return lines
