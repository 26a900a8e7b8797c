"""Pure decisions of the study: domination, the Pareto front, the dominated-trial stopper, the plot data."""

import math

import optuna
import pytest

from adprune_core.records import EpochRecord
from study.pareto import dominates, dominates_by_margin, feasible, pareto_front
from study.plots import layer_curves
from study.stopping import DominatedTrialStopper, check_epochs, dominated_reason

DIRS = ("maximize", "minimize", "minimize")  # val_top1, flops, train_flops_cum
NAMES = ("val_top1", "flops", "train_flops_cum")


def test_domination_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((0.9, 100, 1000), (0.8, 100, 1000), DIRS)
    assert dominates((0.8, 90, 1000), (0.8, 100, 1000), DIRS)
    assert not dominates((0.8, 100, 1000), (0.8, 100, 1000), DIRS)  # a tie dominates nothing
    assert not dominates((0.9, 110, 900), (0.8, 100, 1000), DIRS)  # worse flops
    assert not dominates((math.nan, 1, 1), (0.1, 100, 1000), DIRS)


def test_margin_is_relative_to_the_dominated_point_in_every_objective():
    b = (0.80, 100.0, 1000.0)
    # 5%: needs val >= 0.84, flops <= 95, cum <= 950
    assert dominates_by_margin((0.84, 95.0, 950.0), b, DIRS, 0.05)
    assert not dominates_by_margin((0.839, 95.0, 950.0), b, DIRS, 0.05)
    assert not dominates_by_margin((0.84, 95.1, 950.0), b, DIRS, 0.05)
    assert not dominates_by_margin((0.99, 10.0, 951.0), b, DIRS, 0.05)  # far better twice is not enough
    assert not dominates_by_margin(b, b, DIRS, 0.05)
    assert dominates_by_margin((0.81, 100.0, 1000.0), b, DIRS, 0.0)  # margin 0 = plain domination


def test_pareto_front_keeps_ties_and_drops_dominated_points():
    points = [(0.9, 100, 1000), (0.8, 50, 1000), (0.8, 60, 1000), (0.9, 100, 1000), (0.7, 50, 2000)]
    assert pareto_front(points, DIRS) == [0, 1, 3]
    assert pareto_front([], DIRS) == []


def test_check_epochs_are_fractions_rounded_half_up_and_never_the_last():
    assert check_epochs([0.5], 3) == (2,)  # 1.5 -> 2
    assert check_epochs([0.5, 0.75], 30) == (15, 23)  # 22.5 -> 23
    assert check_epochs([0.9, 0.99], 4) == (3,)  # clamped to epochs - 1, merged
    assert check_epochs([0.5], 1) == ()


def rec(epoch, val, flops, cum):
    return {"epoch": epoch, "val_top1": val, "flops": flops, "train_flops_cum": cum, "params": 1}


def epoch_record(epoch, val, flops, cum):
    """``rec`` as the trainer hands it to a callback."""
    return EpochRecord(epoch=epoch, lr=0.1, train_loss=1.0, train_top1=0.5, val_top1=val, densities={}, widths={},
                       params=1, flops=flops, train_flops_cum=cum, seconds=1.0)


def test_dominated_reason_names_the_trial_and_values():
    mine = rec(2, 0.5, 100, 1000)
    refs = {3: rec(2, 0.52, 99, 990), 7: rec(2, 0.9, 50, 500)}
    reason = dominated_reason(mine, refs, NAMES, DIRS, margin=0.05)
    assert reason.startswith("dominated at epoch 2 by trial 7 by margin 0.05") and "val_top1 0.9 vs 0.5" in reason
    assert dominated_reason(mine, {3: refs[3]}, NAMES, DIRS, margin=0.05) is None  # better, not by 5%
    assert dominated_reason(mine, {3: refs[3]}, NAMES, DIRS, margin=0.0) is not None


def test_stopper_checks_only_its_epochs_against_completed_records():
    completed = {0: [rec(1, 0.3, 100, 100), rec(2, 0.9, 10, 150), rec(3, 0.95, 10, 160)]}
    stopper = DominatedTrialStopper(NAMES, DIRS, epochs=[2], margin=0.05, completed=completed)
    assert stopper.on_epoch_end(epoch_record(1, 0.1, 100, 100)) is None  # far worse, but epoch 1 is not checked
    reason = stopper.on_epoch_end(epoch_record(2, 0.5, 100, 200))
    assert reason and "trial 0" in reason and stopper.reason == reason
    good = DominatedTrialStopper(NAMES, DIRS, epochs=[2], margin=0.05, completed=completed)
    assert good.on_epoch_end(epoch_record(2, 0.92, 10, 150)) is None  # better accuracy: not dominated
    alone = DominatedTrialStopper(NAMES, DIRS, epochs=[2], margin=0.05, completed={})
    assert alone.on_epoch_end(epoch_record(2, 0.0, 1e9, 1e9)) is None  # nothing completed: nothing to compare


def test_layer_curves_from_a_summary():
    from adprune_core.records import BnRecalibration, EpochRecord, PruneEvent, RunSummary

    def epoch(e, densities, widths):
        return EpochRecord(epoch=e, lr=0.1, train_loss=1.0, train_top1=0.5, val_top1=0.5, densities=densities,
                           widths=widths, params=100, flops=200, train_flops_cum=300 * e, seconds=1.0)

    cut = PruneEvent(epoch=1, densities={}, widths_before={}, widths_after={}, params_before=100, params_after=50,
                     flops_before=200, flops_after=100, kept_idxs={}, groups={}, bn_recalibration=BnRecalibration(),
                     val_top1_after_cut=0.4)
    summary = RunSummary(config={}, epochs=(epoch(1, {"a": 0.5, "b": 0.25}, {"a": 8, "b": 16}),
                                            epoch(2, {"a": 0.6, "b": 0.3}, {"a": 4, "b": 8})), prune_events=(cut,))
    curves = layer_curves(summary)
    assert curves.epochs == [1, 2] and curves.prune_epochs == [1]
    assert curves.density == {"a": [0.5, 0.6], "b": [0.25, 0.3]}
    assert curves.width == {"a": [8.0, 4.0], "b": [16.0, 8.0]}


def test_direction_typos_are_errors():
    with pytest.raises(ValueError, match="neither maximize nor minimize"):
        dominates((1,), (0,), ("max",))


def test_the_front_is_optunas_best_trials_under_the_accuracy_constraint():
    """The study's front is ``study.best_trials``: COMPLETE, feasible (constraint <= 0, zero included) and
    non-dominated; PRUNED and FAIL trials never count. The same numbers the study's constraint writes."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    dist = {"x": FloatDistribution(0, 1)}
    for values, constraint, state in [((0.9, 100, 1000), -0.02, TrialState.COMPLETE),  # the baseline
                                      ((0.5, 10, 100), 0.38, TrialState.COMPLETE),  # best costs, but infeasible
                                      ((0.89, 50, 800), -0.01, TrialState.COMPLETE),
                                      (None, None, TrialState.PRUNED), (None, None, TrialState.FAIL),
                                      ((0.88, 60, 900), 0.0, TrialState.COMPLETE)]:  # dominated by trial 2
        attrs = {"constraints": [constraint]} if constraint is not None else {}
        study.add_trial(create_trial(state=state, values=values, params={"x": 0.5}, distributions=dist,
                                     system_attrs=attrs))
    assert sorted(t.number for t in study.best_trials) == [0, 2]
    assert [feasible(t) for t in study.trials if t.state == TrialState.COMPLETE] == [True, False, True, True]
