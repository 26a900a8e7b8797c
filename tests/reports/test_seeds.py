"""Results over seeds (``reports.seeds``) and controls grouped by kind (``reports.pareto.control_summaries``), on
hand-computed numbers."""

import math

import pytest

from reports.pareto import ControlInput, TrialInput, control_summaries, trial_rows
from reports.seeds import compare, seed_stats


def test_seed_stats_mean_and_sample_sd():
    s = seed_stats([{"val_top1": 0.70}, {"val_top1": 0.74}, {"val_top1": 0.72, "flops": 5.0}], ["val_top1", "flops"])
    assert s.n == 3 and s.mean["val_top1"] == pytest.approx(0.72)
    assert s.sd["val_top1"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0.02^2 + 0) / 2)
    assert s.get("flops") == (5.0, s.sd["flops"], 1) and math.isnan(s.sd["flops"])  # one sample: no spread
    assert s.get("test_top1")[2] == 0 and math.isnan(seed_stats([{}], ["x"]).get("x")[0])


@pytest.mark.parametrize(("a", "b", "word", "diff", "se"), [
    ([0.80, 0.82, 0.84], [0.70, 0.72, 0.74], "higher", 0.10, math.sqrt(2 * 0.02 ** 2 / 3)),
    ([0.70, 0.72, 0.74], [0.80, 0.82, 0.84], "lower", -0.10, math.sqrt(2 * 0.02 ** 2 / 3)),
    ([0.70, 0.74, 0.78], [0.68, 0.72, 0.76], "within noise", 0.02, math.sqrt(2 * 0.04 ** 2 / 3)),  # 0.02 < 2 x 0.033
    ([0.80], [0.70, 0.72], "one seed", 0.09, math.nan),
])
def test_compare_says_whether_a_difference_is_more_than_noise(a, b, word, diff, se):
    d = compare(seed_stats([{"v": x} for x in a], ["v"]), seed_stats([{"v": x} for x in b], ["v"]), "v")
    assert d.word == word and d.diff == pytest.approx(diff)
    assert (math.isnan(d.se) and math.isnan(se)) or d.se == pytest.approx(se)
    assert compare(seed_stats([], ["v"]), seed_stats([{"v": 1.0}], ["v"]), "v").word == "no data"


def control(kind, seed, val, test=None, of=3, run="r"):
    metrics = {"val_top1": val} if val is not None else {}
    if test is not None:
        metrics["test_top1"] = test
    return ControlInput(of, kind, metrics, f"{run}-{kind}-{seed}", None, seed)


def test_control_summaries_take_the_latest_finished_run_per_seed_and_the_trial_with_its_repeats():
    trial = TrialInput(3, "COMPLETE", seed=0, values=(0.80, 1.0, 2.0),
                       metrics={"val_top1": 0.80, "test_top1": 0.78, "flops": 1.0})
    controls = [control("scratch", 0, 0.60, run="old"), control("scratch", 0, 0.70, 0.69),  # a rerun replaces
                control("scratch", 1, 0.72, 0.70), control("scratch", 2, None),  # a failed run does not count
                control("repeat", 0, 0.10),  # a repeat at the trial's own seed is the trial: ignored
                control("repeat", 1, 0.76, 0.74), control("uniform", 0, 0.75, of=4)]  # another trial's
    s = control_summaries(trial, controls)
    assert list(s) == ["scratch", "repeat"]
    assert [c.seed for c in s["scratch"].runs] == [0, 1] and s["scratch"].runs[0].run_id == "r-scratch-0"
    assert s["scratch"].stats.mean["val_top1"] == pytest.approx(0.71)
    assert s["repeat"].stats.n == 2 and s["repeat"].stats.mean["val_top1"] == pytest.approx(0.78)
    assert s["repeat"].stats.seeds == (0, 1)
    val = s["scratch"].vs_trial["val_top1"]
    # trial 0.80 and 0.76: sd sqrt(0.0008); scratch 0.70 and 0.72: sd sqrt(0.0002); se sqrt(0.0008/2 + 0.0002/2)
    assert val.diff == pytest.approx(0.07) and val.se == pytest.approx(math.sqrt(0.0005))
    assert val.word == "higher"  # 0.07 > 2 x 0.0224
    assert s["scratch"].vs_trial["test_top1"].diff == pytest.approx((0.78 + 0.74) / 2 - (0.69 + 0.70) / 2)

    row = trial_rows([trial], ("val_top1", "flops", "train_flops_cum"), ("maximize", "minimize", "minimize"),
                     controls)[0]
    assert row["scratch_seeds"] == 2 and row["scratch_val_top1"] == pytest.approx(0.71)
    assert row["scratch_val_top1_sd"] == pytest.approx(math.sqrt(0.0002))
    assert row["val_top1_gain_vs_scratch"] == pytest.approx(0.07) and row["repeat_seeds"] == 2
    assert row["test_top1"] == 0.78 and row["val_test_gap"] == pytest.approx(0.02)
    assert "val_top1_gain_vs_repeat" not in row
