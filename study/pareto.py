"""Domination and the Pareto front: pure functions on plain numbers.

A point is a sequence of objective values; ``directions[i]`` is ``"maximize"`` or ``"minimize"``.
``a`` dominates ``b`` when it is no worse in every objective and strictly better in at least one
(as Optuna's ``optuna/study/_multi_objective.py``). With a ``margin`` m >= 0, ``a`` must also be
better by at least m relative to ``b`` in every objective: ``a >= b + m * |b|`` when maximising,
``a <= b - m * |b|`` when minimising (so ``margin=0.05`` asks for 5% more accuracy *and* 5% fewer
FLOPs *and* 5% less training compute). NaN is never better than anything.

The Pareto front of a study's trials is Optuna's own ``study.best_trials`` (COMPLETE, feasible under the
constraints, non-dominated); the functions here serve the stopper's margin and the report's views.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from study.trial_record import TrialRecord


def dominates_by_margin(a: Sequence[float], b: Sequence[float], directions: Sequence[str],
                        margin: float = 0.0) -> bool:
    """Whether point ``a`` dominates point ``b`` by at least ``margin`` (relative) in every objective."""
    if not len(a) == len(b) == len(directions):
        raise ValueError(f"points {list(a)} and {list(b)} do not match directions {list(directions)}")
    strictly = False
    for x, y, direction in zip(a, b, directions):
        shift = margin * abs(y) * (1 - 1e-9)  # so that exactly 5% better counts despite float noise
        if direction == "maximize":
            ok, better = x >= y + shift, x > y
        elif direction == "minimize":
            ok, better = x <= y - shift, x < y
        else:
            raise ValueError(f"direction {direction!r} is neither maximize nor minimize")
        if not ok:
            return False
        strictly = strictly or better
    return strictly


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Plain Pareto domination (no margin)."""
    return dominates_by_margin(a, b, directions, 0.0)


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in input order (equal points all stay)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]


# --- the same on Optuna trials (duck-typed FrozenTrials: state, values, constraints, user_attrs) ------

def feasible(trial: Any) -> bool:
    """No constraint violated (Optuna's rule: every constraint value <= 0)."""
    return all(v <= 0 for v in trial.constraints.values())


def completed_baseline(trials: Iterable[Any]) -> Any | None:
    """The last COMPLETE dense baseline trial (the one savings and accuracy drops are measured against; a
    study re-enqueues the baseline only when it did not complete), or None."""
    done = [t for t in trials if t.state.name == "COMPLETE" and TrialRecord.from_trial(t).baseline]
    return done[-1] if done else None


def describe_trial(trial: Any, names: Sequence[str]) -> dict[str, Any]:
    """A trial as plain data for the command's closing summary (``SessionOutcome``)."""
    r = TrialRecord.from_trial(trial)
    return {"number": trial.number, "state": trial.state.name, "baseline": r.baseline,
            "values": dict(zip(names, trial.values)) if trial.values else None, "params": dict(trial.params),
            "feasible": feasible(trial), "accuracy_drop": r.accuracy_drop,
            "compression_params": r.compression_params, "compression_flops": r.compression_flops,
            "stop_reason": r.stop_reason, "fail_reason": r.fail_reason,
            "out_dir": r.out_dir, "mlflow_run_id": r.mlflow_run_id}
