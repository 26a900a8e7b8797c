"""The knee of the accuracy/compression front: a pure function on plain numbers ("Kneedle").

Input: candidate points (trial number, ``val_top1`` as a fraction, compression as dense / final, > 0),
usually the study's Pareto trials. The knee is chosen on the 2-D trade-off between accuracy and
compression, both maximised:

1. keep the points no other point beats in both (the 2-D front; of equal points the lowest trial number);
2. map accuracy and log(compression) (compression is multiplicative: 2x -> 4x is as far as 4x -> 8x)
   to [0, 1] each, over the front;
3. draw the line from the most accurate point to the most compressed one; the knee is the point
   farthest *above* it (towards the ideal corner, both = 1), in those normalised units
   (Satopaa et al., "Finding a 'Kneedle' in a Haystack", 2011). Equal distances: the lower trial number.

No knee exists when the front has one or two points, or when no point lies above the line (a straight
or concave front): then the most accurate point is chosen, and the reason says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from study.pareto import pareto_front

MIN_DISTANCE = 1e-9  # normalised units; closer to the line than this counts as on it


@dataclass(frozen=True)
class FrontPoint:
    """One candidate: ``val_top1`` in [0, 1], ``compression`` = dense / final (> 0; 1 = dense)."""

    number: int
    val_top1: float
    compression: float


@dataclass(frozen=True)
class Knee:
    """The chosen point, why, and what it was chosen from."""

    number: int
    reason: str
    front: tuple[int, ...]  # trial numbers of the 2-D front, most accurate first
    distance: float  # above the line between the extremes, normalised units (0 when no knee)


def front_2d(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The points not beaten in both accuracy and compression; duplicates keep the lowest number.

    Ordered from the most accurate to the most compressed (the front's natural order)."""
    unique: dict[tuple[float, float], FrontPoint] = {}
    for p in sorted(points, key=lambda p: p.number):
        unique.setdefault((p.val_top1, p.compression), p)
    pts = list(unique.values())
    kept = [pts[i] for i in pareto_front([(p.val_top1, p.compression) for p in pts], ("maximize", "maximize"))]
    return sorted(kept, key=lambda p: (-p.val_top1, p.compression, p.number))


def find_knee(points: Sequence[FrontPoint], compression_name: str = "compression_flops") -> Knee:
    """The knee of ``points`` (see the module docstring); ``compression_name`` only words the reason."""
    if not points:
        raise ValueError("find_knee needs at least one point")
    bad = [p for p in points if not (p.compression > 0 and math.isfinite(p.compression)
                                     and math.isfinite(p.val_top1))]
    if bad:
        raise ValueError(f"trial {bad[0].number}: val_top1 {bad[0].val_top1} / {compression_name} "
                         f"{bad[0].compression} must be finite and the compression > 0")
    front = front_2d(points)
    numbers = tuple(p.number for p in front)
    best = front[0]  # the most accurate
    if len(front) < 3:
        return Knee(best.number, f"the accuracy/{compression_name} front has {len(front)} point(s) "
                                 f"(trials {_list(numbers)}), too few for a knee: the most accurate, "
                                 f"{_describe(best, compression_name)}", numbers, 0.0)
    first, last = front[0], front[-1]  # most accurate, most compressed
    acc_lo, acc_span = last.val_top1, first.val_top1 - last.val_top1
    log_lo, log_span = math.log(first.compression), math.log(last.compression) - math.log(first.compression)

    def xy(p: FrontPoint) -> tuple[float, float]:
        return (math.log(p.compression) - log_lo) / log_span, (p.val_top1 - acc_lo) / acc_span

    # The line runs from (0, 1) to (1, 0): x + y = 1. Signed distance towards (1, 1): (x + y - 1) / sqrt(2).
    distances = [(sum(xy(p)) - 1.0) / math.sqrt(2.0) for p in front]
    top = max(distances)
    if top <= MIN_DISTANCE:
        return Knee(best.number, f"no point of the accuracy/{compression_name} front (trials {_list(numbers)}) "
                                 "lies above the line between its extremes (a straight or concave front, "
                                 f"no knee): the most accurate, {_describe(best, compression_name)}",
                    numbers, 0.0)
    chosen = min((p for p, d in zip(front, distances) if d >= top - MIN_DISTANCE), key=lambda p: p.number)
    reason = (f"knee of the accuracy/{compression_name} front (trials {_list(numbers)}; val_top1 and "
              f"log {compression_name} scaled to [0, 1]): {_describe(chosen, compression_name)} lies farthest "
              f"({top:.3f}) above the line from the most accurate point, {_describe(first, compression_name)}, "
              f"to the most compressed, {_describe(last, compression_name)}")
    return Knee(chosen.number, reason, numbers, top)


def _describe(p: FrontPoint, compression_name: str) -> str:
    return f"trial {p.number} (val_top1 {p.val_top1:.4f}, {compression_name} {p.compression:.2f}x)"


def _list(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)
