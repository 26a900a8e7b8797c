"""The report's pure analysis on hand-made points: the front, the rows, the views, the layers, the health."""

import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from reports.health import (
    NOT_ENOUGH,
    edge_hits,
    edge_warnings,
    hypervolume,
    hypervolume_history,
    hypervolume_scale,
    normalised_losses,
    param_importances,
    range_position,
)
from reports.load import registered_model_name, run_url
from reports.pareto import ControlInput, TrialInput, layer_profile, pareto_mask, trial_rows, view_axes, views
from reports.render import fmt_acc, fmt_pt, fmt_si, fmt_x, md_table

NAMES = ("val_top1", "flops", "train_flops_cum")
DIRS = ("maximize", "minimize", "minimize")
nan = math.nan


# --- the front ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("points", "feasible", "expected"), [
    # a point worse in every objective is dominated
    ([(0.9, 10, 100), (0.8, 20, 200)], None, [True, False]),
    # a trade-off: both stay
    ([(0.9, 20, 100), (0.8, 10, 100)], None, [True, True]),
    # duplicates do not dominate each other; equal in two objectives and worse in one is dominated
    ([(0.9, 10, 100), (0.9, 10, 100), (0.9, 10, 101)], None, [True, True, False]),
    # a tie in accuracy, better in cost: dominates
    ([(0.9, 10, 100), (0.9, 9, 100)], None, [False, True]),
    # an infeasible point is never on the front and dominates nothing
    ([(1.0, 1, 1), (0.5, 5, 5)], [False, True], [False, True]),
    # NaN (a run that never finished) likewise
    ([(nan, 1, 1), (0.5, 5, 5), (0.4, 6, nan)], None, [False, True, False]),
    ([], None, []),
])
def test_pareto_mask_hand_made(points, feasible, expected):
    assert pareto_mask(points, DIRS, feasible) == expected


def test_pareto_mask_agrees_with_optuna_best_trials():
    rng = random.Random(3)
    # coarse values make ties and duplicates common
    points = [(rng.choice([0.5, 0.6, 0.7]), rng.choice([1, 2, 3]), rng.choice([10, 20, 30])) for _ in range(60)]
    study = optuna.create_study(directions=list(DIRS))
    study.add_trials([optuna.trial.create_trial(values=list(p)) for p in points])
    best = sorted(t.number for t in study.best_trials)
    assert [i for i, on in enumerate(pareto_mask(points, DIRS)) if on] == best


def test_pareto_mask_refuses_mismatched_flags():
    with pytest.raises(ValueError, match="2 points but 1 feasibility flags"):
        pareto_mask([(1, 1, 1), (2, 2, 2)], DIRS, [True])


# --- rows ----------------------------------------------------------------------------------------------

def metrics(val, params, flops, cum):
    return {"val_top1": val, "params": params, "flops": flops, "train_flops_cum": cum}


TRIALS = [
    TrialInput(0, "COMPLETE", baseline=True, values=(0.9, 100, 1e4), metrics=metrics(0.9, 1000, 100, 1e4),
               run_id="r0", url="u0"),
    TrialInput(1, "COMPLETE", values=(0.88, 40, 5e3), metrics=metrics(0.88, 250, 40, 5e3),
               params={"prune.width_scale": 0.9, "prune.rounds": 2}, run_id="r1", url="u1", picked=True),
    TrialInput(2, "PRUNED", metrics=metrics(0.5, 500, 50, 2e3), params={"prune.width_scale": 1.1},
               stop_reason="dominated at epoch 2 by trial 1"),
    TrialInput(3, "FAIL", params={"prune.width_scale": 1.0}, fail_reason="diverged at epoch 1"),
    # would dominate everything, but broke the accuracy constraint
    TrialInput(4, "COMPLETE", values=(0.95, 10, 1e3), metrics=metrics(0.95, 50, 10, 1e3), feasible=False,
               params={"prune.width_scale": 0.8, "prune.rounds": 1}),
]
CONTROLS = [ControlInput(1, "scratch", metrics(0.80, 250, 40, 4e3), "c-old"),
            ControlInput(1, "scratch", metrics(0.85, 250, 40, 4e3), "c1", "uc1")]


def test_trial_rows_savings_against_the_baseline():
    rows = {r["number"]: r for r in trial_rows(TRIALS, NAMES, DIRS, CONTROLS, baseline=0)}
    assert list(rows) == [0, 1, 2, 3, 4]
    base, one = rows[0], rows[1]
    assert base["baseline"] and base["accuracy_change"] == 0 and base["compression_flops"] == 1
    assert base["train_compute_reduction"] == 1 and base["search.prune.width_scale"] is None
    assert one["accuracy_change"] == pytest.approx(-0.02)
    assert one["compression_params"] == 4 and one["compression_flops"] == 2.5 and one["train_compute_reduction"] == 2
    assert (one["val_top1"], one["flops"], one["train_flops_cum"], one["params"]) == (0.88, 40, 5e3, 250)
    assert one["search.prune.rounds"] == 2 and one["picked"] and one["mlflow_run_id"] == "r1"
    assert [r["pareto"] for r in rows.values()] == [True, True, False, False, False]
    # a stopped run's numbers are partial: no metrics, no savings, but the reason
    assert math.isnan(rows[2]["val_top1"]) and math.isnan(rows[2]["compression_flops"])
    assert rows[2]["stop_reason"].startswith("dominated") and rows[3]["fail_reason"] == "diverged at epoch 1"
    assert not rows[4]["feasible"] and rows[4]["train_compute_reduction"] == 10
    # the latest control of a kind sits beside its trial; gain = trial - control
    assert one["scratch_val_top1"] == 0.85 and one["scratch_run_id"] == "c1" and one["scratch_url"] == "uc1"
    assert one["val_top1_gain_vs_scratch"] == pytest.approx(0.03)
    assert math.isnan(base["scratch_val_top1"]) and base["scratch_run_id"] is None


def test_trial_rows_without_baseline_leave_savings_blank():
    rows = trial_rows(TRIALS[1:], NAMES, DIRS)
    assert all(math.isnan(r["accuracy_change"]) and math.isnan(r["compression_flops"]) for r in rows)
    assert [r["pareto"] for r in rows] == [True, False, False, False]


def test_views_axes_points_and_controls():
    assert view_axes(NAMES) == [("flops", "val_top1"), ("train_flops_cum", "val_top1"), ("train_flops_cum", "flops")]
    assert view_axes(("train_flops_cum", "params", "val_top1")) == [
        ("params", "val_top1"), ("train_flops_cum", "val_top1"), ("train_flops_cum", "params")]
    rows = trial_rows(TRIALS, NAMES, DIRS, CONTROLS, baseline=0)
    first, _, last = views(rows, NAMES, CONTROLS)
    assert (first.x, first.y, last.x, last.y) == ("flops", "val_top1", "train_flops_cum", "flops")
    trials = [p for p in first.points if p.control is None]
    assert [(p.number, p.x, p.y) for p in trials] == [(0, 100, 0.9), (1, 40, 0.88), (4, 10, 0.95)]  # COMPLETE only
    assert [(p.pareto, p.baseline, p.feasible) for p in trials] == [(True, True, True), (True, False, True),
                                                                    (False, False, False)]
    assert trials[1].url == "u1" and trials[1].run_id == "r1"
    controls = [p for p in last.points if p.control]
    assert [(p.number, p.control, p.x, p.y, p.run_id) for p in controls] == [
        (1, "scratch", 4e3, 40, "c-old"), (1, "scratch", 4e3, 40, "c1")]


# --- layers --------------------------------------------------------------------------------------------

def test_layer_profile_before_after_and_density():
    epochs = [{"epoch": 1, "widths": {"a": 8, "b": 16}, "densities": {"a": 0.5, "b": 0.25}},
              {"epoch": 2, "widths": {"a": 4, "b": 4}, "densities": {"a": 0.6}},
              {"epoch": 3, "widths": {"a": 4, "b": 4}, "densities": {"a": 0.7, "b": 0.3}}]
    p = layer_profile(7, epochs, [1])
    assert (p.number, p.layers, p.width_dense, p.width_final) == (7, ("a", "b"), (8, 16), (4, 4))
    assert p.epochs == (1, 2, 3) and p.prune_epochs == (1,) and p.density["a"] == (0.5, 0.6, 0.7)
    assert p.density["b"][0] == 0.25 and math.isnan(p.density["b"][1])
    assert layer_profile(7, []) is None


# --- hypervolume ---------------------------------------------------------------------------------------

BASE = (0.5, 100.0, 1000.0)  # the baseline: accuracy 0.5, 100 FLOPs, 1000 training FLOPs
BOX = 1.0 * 1.1 * 1.1  # accuracy 0..1 x normalised cost 0..1.1 x 0..1.1


def hv(points):
    scale = hypervolume_scale(NAMES, BASE, points)
    return hypervolume(normalised_losses(points, DIRS, scale), DIRS)


def test_hypervolume_hand_computed():
    assert hypervolume_scale(NAMES, BASE, []).scale == (1.0, 100.0, 1000.0)
    # the baseline alone dominates accuracy 0..0.5 x cost 1..1.1 x 1..1.1
    assert hv([BASE]) == pytest.approx(0.5 * 0.1 * 0.1 / BOX)
    a = (0.5, 55.0, 550.0)  # same accuracy at 55% of the cost
    assert hv([a]) == pytest.approx(0.5 * 0.55 * 0.55 / BOX)
    b = (0.8, 100.0, 1000.0)  # more accurate, dense: the union of the two boxes
    assert hv([a, b]) == pytest.approx((0.5 * 0.55 * 0.55 + 0.8 * 0.01 - 0.5 * 0.01) / BOX)
    # a dominated point, a point beyond the reference and a NaN add nothing
    assert hv([a, (0.4, 60.0, 600.0), (0.9, 120.0, 10.0), (nan, 1.0, 1.0)]) == pytest.approx(hv([a]))
    assert hv([]) == 0.0 and hv([(0.0, 1.0, 1.0)]) == 0.0  # accuracy 0 is the reference: no volume
    assert hv([(1.0, 0.0, 0.0)]) == pytest.approx(1.0)  # the ideal point fills the box


def test_hypervolume_scale_without_baseline_uses_the_largest_values():
    s = hypervolume_scale(NAMES, None, [(0.5, 10.0, 300.0), (0.6, 40.0, 200.0)])
    assert s.scale == (1.0, 40.0, 300.0) and s.source == "largest value"


def test_hypervolume_history_skips_ineligible_trials_and_never_falls():
    points = [BASE, (0.9, 10.0, 100.0), (0.5, 55.0, 550.0), (nan, nan, nan)]
    scale = hypervolume_scale(NAMES, BASE, points)
    history = hypervolume_history([3, 0, 1, 2], [points[1], BASE, points[2], points[3]],
                                  [False, True, True, False], DIRS, scale)
    assert [n for n, _ in history] == [0, 1, 2, 3]
    assert history[0][1] == pytest.approx(hv([BASE]))
    assert history[1][1] == pytest.approx(hv([BASE, points[2]]))
    assert history[3][1] == history[2][1] == history[1][1]  # trial 3 (infeasible, dominant) is left out


# --- importances and edges -----------------------------------------------------------------------------

def make_trial(number, a, b, values, baseline=False):
    dists = {"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(0.0, 1.0)}
    return optuna.trial.create_trial(params={} if baseline else {"a": a, "b": b},
                                     distributions={} if baseline else dists, values=values,
                                     user_attrs={"baseline": baseline})


def test_importances_find_the_parameter_that_matters_and_say_when_there_are_too_few():
    rng = random.Random(0)
    trials = [make_trial(0, 0, 0, [0.5, 1.0, 1.0], baseline=True)]
    for i in range(1, 13):
        a, b = rng.random(), rng.random()
        trials.append(make_trial(i, a, b, [a, 1.0 + b, 2.0 + a * b]))
    imp = param_importances(trials, NAMES, DIRS)
    assert imp.note is None and imp.trials == 12 and set(imp.by_objective) == set(NAMES)
    assert imp.by_objective["val_top1"]["a"] > 0.8 and imp.by_objective["flops"]["b"] > 0.8
    assert sum(imp.by_objective["flops"].values()) == pytest.approx(1.0)
    few = param_importances(trials[:4], NAMES, DIRS)  # the baseline does not count
    assert few.note.startswith(NOT_ENOUGH) and "3 complete searched trials" in few.note and not few.by_objective


def test_edge_hits_linear_log_int_and_categorical():
    dists = {"w": FloatDistribution(0.8, 1.2), "tol": FloatDistribution(0.001, 0.1, log=True),
             "rounds": IntDistribution(1, 5), "select": CategoricalDistribution(["l1", "random"])}
    assert range_position(1.0, 0.8, 1.2) == pytest.approx(0.5)
    hits = edge_hits(3, {"w": 0.805, "tol": 0.00105, "rounds": 5, "select": "l1"}, dists)
    assert [(h.key, h.end) for h in hits] == [("w", "low"), ("tol", "low"), ("rounds", "high")]
    # 1.19 sits at 97.5%: not within 2%; on the log scale 0.0011 is 2.07% in (linearly it would be 0.1%)
    assert edge_hits(3, {"w": 1.19, "tol": 0.0011, "rounds": 3}, dists) == []
    # the same from study_config.json's plain mappings
    assert [h.end for h in edge_hits(1, {"w": 1.2}, {"w": {"low": 0.8, "high": 1.2}})] == ["high"]
    lines = edge_warnings(edge_hits(1, {"w": 0.8}, dists) + edge_hits(2, {"w": 0.801}, dists))
    assert len(lines) == 1 and "w sits at the low end of its range [0.8, 1.2]" in lines[0]
    assert "trial 1 (0.8), trial 2 (0.801)" in lines[0] and "widen the range" in lines[0]


def test_edges_at_a_keys_own_limit_are_natural_not_warnings():
    from study.space import key_limits

    dists = {"prune.patience": IntDistribution(1, 4), "prune.rounds": IntDistribution(1, 3),
             "prune.width_scale": FloatDistribution(0.8, 1.5), "prune.channel_density_min": FloatDistribution(0.0, 0.1)}
    limits = key_limits(dists)
    assert limits["prune.patience"] == (1, None) and limits["prune.rounds"] == (1, None)
    assert limits["prune.channel_density_min"] == (0.0, 1.0) and limits["prune.width_scale"] == (0.0, None)
    params = {"prune.patience": 1, "prune.rounds": 1, "prune.width_scale": 0.8, "prune.channel_density_min": 0.0}
    hits = edge_hits(2, params, dists, limits=limits)
    assert [(h.key, h.end) for h in hits] == [("prune.width_scale", "low")]  # the only range that can grow
    assert "widen the range (lower its low end below 0.8)" in edge_warnings(hits)[0]
    high = edge_hits(2, {"prune.patience": 4, "prune.width_scale": 1.5}, dists, limits=limits)
    assert [(h.key, h.end) for h in high] == [("prune.patience", "high"), ("prune.width_scale", "high")]
    assert "(raise its high end above 4)" in edge_warnings(high)[0]


def test_axis_range_pads_equal_values_and_keeps_accuracy_in_0_1():
    from reports.figures import axis_range

    lo, hi = axis_range([1.12166e9, 1.12166e9, 1.12166e9])
    assert lo == pytest.approx(1.12166e9 * 0.98) and hi == pytest.approx(1.12166e9 * 1.02)
    assert axis_range([0.5, 0.5], accuracy=True) == pytest.approx([0.48, 0.52])
    assert axis_range([0.0, 0.99], accuracy=True) == pytest.approx([0.0, 1.0])  # never below 0 nor above 1
    assert axis_range([2.0, 4.0]) == pytest.approx([2.0 - 0.16, 4.0 + 0.16])  # 8% of the span
    assert axis_range([nan]) is None


# --- small helpers -------------------------------------------------------------------------------------

def test_number_formats_and_links():
    assert (fmt_si(1.234e9), fmt_si(5162240), fmt_si(950), fmt_si(nan)) == ("1.23 G", "5.16 M", "950", "–")
    assert (fmt_acc(0.8125), fmt_pt(-0.012), fmt_pt(0.0), fmt_x(2.5)) == ("81.25%", "-1.20 pt", "+0.00 pt", "2.50x")
    assert md_table(("a", "b"), [["1|2", "x"]]).splitlines() == ["| a | b |", "|---|---|", "| 1\\|2 | x |"]
    assert run_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert run_url("http://h:5000", None, "abc") is None
    assert registered_model_name("cifar10/vgg19 a") == "adprune-cifar10-vgg19-a"

