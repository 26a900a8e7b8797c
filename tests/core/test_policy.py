"""The policy's pure decisions, on hand-computed numbers."""

import pytest

from adprune_core.config import PruneConfig
from adprune_core.density import ChannelCounts
from adprune_core.policy import (
    GroupMeasure,
    channel_scores,
    combine_counts,
    cut_seed,
    densities_settled,
    first_prune_epoch,
    first_prune_range,
    new_width,
    plan_cut,
    select_channels,
    should_prune,
    threshold_width,
    worth_pruning,
)
from adprune_core.records import GroupDecision


@pytest.mark.parametrize(
    ("density", "width", "kwargs", "expected"),
    [
        (0.5, 64, {}, 32),  # exactly half; float noise must not round 32 up to 33
        (0.3, 64, {}, 20),  # ceil(19.2)
        (0.0, 64, {}, 1),  # never zero: min_channels = 1
        (0.0, 64, {"min_channels": 8}, 8),
        (0.3, 64, {"round_to": 8}, 24),  # 20 rounded up to a multiple of 8
        (0.99, 10, {"round_to": 8}, 10),  # rounding never grows a layer
        (0.5, 64, {"width_scale": 1.5}, 48),
        (1.0, 64, {"width_scale": 2.0}, 64),  # capped at the current width
        (0.1, 3, {"min_channels": 8}, 3),  # min_channels above width: stays
    ],
)
def test_new_width(density, width, kwargs, expected):
    assert new_width(density, width, **kwargs) == expected


@pytest.mark.parametrize(
    ("densities", "threshold", "kwargs", "expected"),
    [
        ([0.9, 0.1, 0.5, 0.3, 0.6], 0.5, {}, 3),  # 0.9, 0.5 (at the threshold counts), 0.6
        ([0.9, 0.1, 0.5, 0.3, 0.6], 0.95, {}, 1),  # none clears it: min_channels = 1
        ([0.9, 0.1, 0.5, 0.3, 0.6], 0.95, {"min_channels": 2}, 2),
        ([0.9, 0.1, 0.5, 0.3, 0.6], 0.5, {"round_to": 2}, 4),  # 3 rounded up to 4
        ([0.9, 0.8, 0.7], 0.5, {"round_to": 4}, 3),  # rounding never grows a group
        ([0.1 + 0.2, 0.3], 0.3, {}, 2),  # 0.30000000000000004 and 0.3 both count
        ([0.2] * 6, 0.0, {}, 6),  # threshold 0 keeps everything
    ],
)
def test_threshold_width(densities, threshold, kwargs, expected):
    assert threshold_width(densities, threshold, **kwargs) == expected


def test_select_keeps_highest_scores_in_index_order():
    scores = [0.1, 0.9, 0.5, 0.7]
    assert select_channels(scores, 2, channel_densities=scores) == [1, 3]


def test_select_ties_go_to_lower_index():
    assert select_channels([0.5, 0.5, 0.5], 2, channel_densities=[0.5] * 3) == [0, 1]


def test_density_floor_removes_channels_even_below_target_width():
    dens = [0.01, 0.8, 0.02, 0.6, 0.7]
    # target 4, but only 3 channels clear the floor of 0.05
    assert select_channels(dens, 4, channel_densities=dens, density_min=0.05) == [1, 3, 4]


def test_density_floor_keeps_min_channels_and_rounding():
    dens = [0.01, 0.8, 0.02, 0.03]
    assert select_channels(dens, 4, channel_densities=dens, density_min=0.5, min_channels=2) == [1, 3]
    assert select_channels(dens, 4, channel_densities=dens, density_min=0.5, round_to=2) == [1, 3]


def test_l1_scores_with_density_floor():
    l1 = [5.0, 1.0, 3.0, 4.0]
    dens = [0.0, 0.9, 0.9, 0.9]  # channel 0 has the largest norm but is dead
    scores = channel_scores("l1", dens, l1, seed=0)
    assert select_channels(scores, 2, channel_densities=dens, density_min=0.1) == [2, 3]


def test_random_scores_are_seeded():
    assert channel_scores("random", [0] * 8, [], seed=3) == channel_scores("random", [0] * 8, [], seed=3)
    assert channel_scores("random", [0] * 8, [], seed=3) != channel_scores("random", [0] * 8, [], seed=4)


def test_combine_mean_pools_counts():
    # activation a: 4 outputs per channel, channel nonzero 4 and 0; b: 12 outputs per channel, 6 and 6
    a, b = ChannelCounts((4, 0), 4), ChannelCounts((6, 6), 12)
    density, per_channel = combine_counts([a, b], "mean")
    assert per_channel == [10 / 16, 6 / 16]
    assert density == pytest.approx(16 / 32)


def test_combine_max_is_conservative():
    a, b = ChannelCounts((4, 0), 4), ChannelCounts((6, 6), 12)  # densities (1, 0) and (0.5, 0.5)
    density, per_channel = combine_counts([a, b], "max")
    assert per_channel == [1.0, 0.5]
    assert density == 0.5  # max of layer densities 0.5 and 0.5


def test_densities_settled():
    h = [{"a": 0.5}, {"a": 0.40}, {"a": 0.395}, {"a": 0.392}]
    assert densities_settled(h, tol=0.01, patience=2)
    assert not densities_settled(h, tol=0.01, patience=3)  # step 0.5 -> 0.40 is too big
    assert not densities_settled(h[:2], tol=0.01, patience=2)  # not enough history
    assert not densities_settled([{"a": 0.5, "b": 0.1}, {"a": 0.5, "b": 0.2}], tol=0.01, patience=1)


def _history(values):
    return [{"l": v} for v in values]


def test_schedule_none_and_fixed():
    assert not should_prune(PruneConfig(schedule="none"), 3, 10, _history([0.5] * 3), 0, 0)
    fixed = PruneConfig(schedule="fixed", epochs=(3, 6))
    assert [e for e in range(1, 11) if should_prune(fixed, e, 10, [], 0, 0)] == [3, 6]
    assert not should_prune(PruneConfig(schedule="fixed", epochs=(3, 6), max_rounds=1), 6, 10, [], 3, 1)


def test_schedule_interval():
    cfg = PruneConfig(schedule="interval", warmup=2, interval=3)
    assert [e for e in range(1, 13) if should_prune(cfg, e, 12, [], 0, 0)] == [2, 5, 8, 11]
    cfg0 = PruneConfig(schedule="interval", warmup=0, interval=4)
    assert [e for e in range(1, 13) if should_prune(cfg0, e, 12, [], 0, 0)] == [4, 8]  # never the last


def test_schedule_saturation_waits_for_warmup_and_patience():
    cfg = PruneConfig(schedule="saturation", warmup=3, patience=2, density_tol=0.01)
    h = _history([0.9, 0.6, 0.5, 0.5, 0.5, 0.5])
    fired = [e for e in range(1, 7) if should_prune(cfg, e, 10, h[:e], 0, 0)]
    assert fired == [5, 6]  # epochs 3-4-5 are the first two settled steps
    # after a prune at epoch 5, history restarts at epoch 6: needs warmup 3 and 3 records
    h2 = _history([0.9, 0.6, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3])
    assert not should_prune(cfg, 7, 20, h2[:7], 5, 1)
    assert should_prune(cfg, 8, 20, h2[:8], 5, 1)


def test_max_rounds_and_last_epoch():
    cfg = PruneConfig(schedule="interval", warmup=0, interval=1, max_rounds=2)
    assert should_prune(cfg, 1, 5, [], 0, 0)
    assert not should_prune(cfg, 3, 5, [], 2, 2)
    assert not should_prune(cfg, 5, 5, [], 0, 0)


def test_worth_pruning():
    assert worth_pruning(1000, 900, 0.1)
    assert not worth_pruning(1000, 901, 0.1)
    assert not worth_pruning(1000, 1000, 0.0)  # a no-op round is never worth it


# Densities of two layers over six epochs: they move by 0.20, 0.05, 0.01, 0.004 and 0.002.
HISTORY = [{"a": a, "b": 0.5} for a in (0.80, 0.60, 0.55, 0.54, 0.536, 0.534)]


@pytest.mark.parametrize(("cfg", "expected"), [
    # saturation, tol 0.02, patience 1: the first step under 0.02 is 0.55 -> 0.54, i.e. after epoch 4
    (PruneConfig(schedule="saturation", warmup=0, density_tol=0.02, patience=1), 4),
    (PruneConfig(schedule="saturation", warmup=0, density_tol=0.02, patience=2), 5),  # two settled steps: 4->5
    (PruneConfig(schedule="saturation", warmup=5, density_tol=0.02, patience=1), 5),  # settled at 4, warm-up to 5
    (PruneConfig(schedule="saturation", warmup=0, density_tol=0.06, patience=1), 3),  # 0.05 < 0.06 already at 3
    (PruneConfig(schedule="saturation", warmup=0, density_tol=0.001, patience=1), None),  # never within 6 epochs
    (PruneConfig(schedule="fixed", epochs=(4, 6)), 4),
    (PruneConfig(schedule="interval", warmup=2, interval=3), 2),
    (PruneConfig(schedule="none"), None),
    (PruneConfig(schedule="fixed", epochs=(2,), max_rounds=0), None),
])
def test_first_prune_epoch_replays_the_schedule_over_the_history(cfg, expected):
    assert first_prune_epoch(cfg, 10, HISTORY) == expected


def test_first_prune_epoch_only_looks_at_the_history_given():
    cfg = PruneConfig(schedule="saturation", warmup=0, density_tol=0.02, patience=1)
    assert first_prune_epoch(cfg, 10, HISTORY[:3]) is None  # settles after epoch 4: not within 3
    assert first_prune_epoch(cfg, 4, HISTORY) is None  # a run of 4 epochs never prunes after its last


@pytest.mark.parametrize(("cfg", "expected"), [
    (PruneConfig(schedule="fixed", epochs=(3, 6)), (3, 3)),
    (PruneConfig(schedule="interval", warmup=4, interval=2), (4, 4)),
    (PruneConfig(schedule="interval", warmup=0, interval=3), (3, 3)),  # epoch 0 is no epoch: the first is 3
    (PruneConfig(schedule="saturation", warmup=2, patience=3), (4, 9)),  # patience 3 needs 4 measured epochs
    (PruneConfig(schedule="saturation", warmup=6, patience=1), (6, 9)),
    (PruneConfig(schedule="saturation", warmup=12, patience=1), None),  # warm-up past the run
    (PruneConfig(schedule="none"), None),
])
def test_first_prune_range(cfg, expected):
    assert first_prune_range(cfg, 10) == expected


# --- a whole cut ----------------------------------------------------------------------------------------

def _group(name, width, *nonzero, total=8, l1=()):
    return GroupMeasure(name, width, tuple(ChannelCounts(tuple(n), total) for n in nonzero), tuple(l1))


def test_plan_cut_ad_rule_keeps_the_densest_channels():
    # per-channel densities 1, 0, 0.5, 1; group density 20/32 = 0.625; ceil(0.625 * 4) = 3 channels
    plan = plan_cut(PruneConfig(width_rule="ad", select="density"), [_group("g", 4, (8, 0, 4, 8))], seed=0, epoch=1)
    assert plan.kept == {"g": [0, 2, 3]}
    assert plan.decisions == {"g": GroupDecision(density=0.625, width_before=4)}


def test_plan_cut_threshold_rule_and_a_width_plan():
    cfg = PruneConfig(width_rule="threshold", channel_threshold=0.75, select="density")
    plan = plan_cut(cfg, [_group("a", 4, (8, 0, 4, 8)), _group("b", 2, (2, 6))], seed=0, epoch=1, widths={"b": 1})
    assert plan.kept == {"a": [0, 3], "b": [1]}  # a: two channels at >= 0.75; b: the plan's one, the densest
    assert plan.decisions["a"] == GroupDecision(0.625, 4, at_threshold=2)
    assert plan.decisions["b"] == GroupDecision(0.5, 2, planned_width=1)


def test_plan_cut_skips_unmeasured_groups_and_seeds_random_scores_by_group_index():
    cfg = PruneConfig(width_rule="ad", select="random", width_scale=1.0)
    groups = [_group("unmeasured", 4), _group("g", 4, (4, 4, 4, 4))]  # density 0.5: keep 2 of 4
    plan = plan_cut(cfg, groups, seed=3, epoch=2)
    scores = channel_scores("random", [0.5] * 4, [], seed=cut_seed(3, 2, 1))  # index 1: its place in the network
    assert cut_seed(3, 2, 1) == 3 * 100_003 + 2 * 1_009 + 1
    assert set(plan.kept) == {"g"} and plan.kept["g"] == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])


def test_plan_cut_l1_uses_the_given_norms():
    plan = plan_cut(PruneConfig(width_rule="ad", select="l1"), [_group("g", 4, (4, 4, 4, 4), l1=(0.1, 3, 2, 0.5))],
                    seed=0, epoch=1)
    assert plan.kept == {"g": [1, 2]}
