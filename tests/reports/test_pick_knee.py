"""The knee of the accuracy/compression front (reports.knee), on hand-made points with hand-computed answers."""

import math
import random

import pytest

from reports.knee import FrontPoint, find_knee, front_2d


def P(number, val_top1, compression):
    return FrontPoint(number, val_top1, compression)


def test_the_knee_is_the_point_farthest_above_the_line_between_the_extremes():
    # log2 compression 0, 2, 3 -> x = 0, 2/3, 1; accuracy 0.9, 0.89, 0.5 -> y = 1, 0.975, 0
    points = [P(0, 0.9, 1.0), P(1, 0.89, 4.0), P(2, 0.5, 8.0)]
    knee = find_knee(points)
    assert knee.number == 1
    assert knee.distance == pytest.approx((2 / 3 + 0.975 - 1) / math.sqrt(2))
    assert knee.front == (0, 1, 2)  # most accurate first
    assert "trial 1 (val_top1 0.8900, compression_flops 4.00x) lies farthest" in knee.reason
    assert "from the most accurate point, trial 0" in knee.reason and "to the most compressed, trial 2" in knee.reason


def test_the_input_order_does_not_matter():
    points = [P(0, 0.9, 1.0), P(1, 0.89, 4.0), P(2, 0.5, 8.0), P(3, 0.8, 6.0)]
    for seed in range(5):
        shuffled = points[:]
        random.Random(seed).shuffle(shuffled)
        assert find_knee(shuffled) == find_knee(points)


def test_dominated_and_duplicate_points_are_left_out():
    points = [P(0, 0.9, 1.0), P(1, 0.89, 4.0), P(2, 0.5, 8.0),
              P(3, 0.6, 2.0),  # dominated by trial 1 in both accuracy and compression
              P(4, 0.89, 4.0)]  # the same point as trial 1: the lower number stays
    assert [p.number for p in front_2d(points)] == [0, 1, 2]
    knee = find_knee(points)
    assert knee.number == 1 and knee.front == (0, 1, 2)


@pytest.mark.parametrize(("low", "high"), [(4, 7), (7, 4)])
def test_equal_distances_go_to_the_lower_trial_number(low, high):
    # normalised (x, y) = (0.25, 0.9) and (0.9, 0.25): both 0.15 / sqrt(2) above the line x + y = 1
    points = [P(0, 1.0, 1.0), P(low, 0.9, 16 ** 0.25), P(high, 0.25, 16 ** 0.9), P(9, 0.0, 16.0)]
    knee = find_knee(points)
    assert knee.number == 4
    assert knee.distance == pytest.approx(0.15 / math.sqrt(2))


@pytest.mark.parametrize("points", [
    [P(3, 0.8, 2.0)],
    [P(5, 0.7, 3.0), P(3, 0.8, 2.0)],
    [P(3, 0.8, 2.0), P(5, 0.8, 2.0), P(6, 0.7, 1.5)],  # a duplicate and a dominated point: one point is left
])
def test_a_front_of_one_or_two_points_gives_the_most_accurate(points):
    knee = find_knee(points)
    assert knee.number == 3 and knee.distance == 0.0
    assert "too few for a knee: the most accurate, trial 3" in knee.reason


@pytest.mark.parametrize("middle_val", [0.5, 0.3])  # on the line (straight front), below it (concave front)
def test_no_point_above_the_line_gives_the_most_accurate(middle_val):
    points = [P(2, 1.0, 1.0), P(1, middle_val, 4.0), P(0, 0.0, 16.0)]
    knee = find_knee(points, "compression_params")
    assert knee.number == 2 and knee.distance == 0.0
    assert "lies above the line between its extremes" in knee.reason and "compression_params" in knee.reason


@pytest.mark.parametrize("bad", [P(1, 0.5, 0.0), P(1, 0.5, -2.0), P(1, math.nan, 2.0), P(1, 0.5, math.inf)])
def test_points_that_cannot_be_placed_are_refused(bad):
    with pytest.raises(ValueError, match="trial 1"):
        find_knee([P(0, 0.9, 1.0), bad])


def test_no_points_is_refused():
    with pytest.raises(ValueError, match="at least one point"):
        find_knee([])
