"""``make bench-study``'s own pieces: the comparison of two studies and the table it writes."""

from types import SimpleNamespace

from study.bench import CASES, Result, render, same_trials


def trial(number, values, records, state="COMPLETE", params=None):
    return SimpleNamespace(number=number, values=values, state=state, params=params or {"x": number},
                           user_attrs={"records": records})


def test_same_trials_compares_params_states_values_and_records():
    a = [trial(0, [0.5, 1.0, 2.0], [{"epoch": 1, "val_top1": 0.5}]), trial(1, [0.4, 0.5, 1.0], [])]
    assert same_trials(a, [trial(0, [0.5, 1.0, 2.0], [{"epoch": 1, "val_top1": 0.5}]), trial(1, [0.4, 0.5, 1.0], [])])
    assert not same_trials(a, a[:1])
    assert not same_trials(a, [a[0], trial(1, [0.4, 0.5, 1.0001], [])])  # a value
    assert not same_trials(a, [trial(0, [0.5, 1.0, 2.0], [{"epoch": 1, "val_top1": 0.6}]), a[1]])  # a record
    assert not same_trials(a, [a[0], trial(1, [0.4, 0.5, 1.0], [], state="PRUNED")])


def test_render_puts_both_runs_and_their_ratios_side_by_side():
    trials = [trial(0, [0.5, 1.0, 2.0], [])]
    off = Result(False, wall_s=100.0, cpu_s=180.0, trial_s=90.0, trials=trials, front=[(0, (0.5, 1.0, 2.0))],
                 flops_spent=4e12, flops_counted=4e12, forked=0, reused_epochs=0)
    on = Result(True, wall_s=40.0, cpu_s=60.0, trial_s=30.0, trials=trials, front=[(0, (0.5, 1.0, 2.0))],
                flops_spent=1e12, flops_counted=4e12, forked=1, reused_epochs=3)
    text = render([(CASES["synthetic"], 6, off, on)], ["cifar10: no data"], "make bench-study", (1.0, 2.0))
    assert "Command: `make bench-study`" in text and "load average 1.0 at the start, 2.0 at the end" in text
    assert "| synthetic-vgg11 | 1 x 6 | off | 100 | 180 | 90 | 36 | 4e+12 | 4e+12 | 0 (0) | yes | yes |" in text
    assert "| synthetic-vgg11 | 1 x 6 | on | 40 | 60 | 30 | 90 | 1e+12 | 4e+12 | 1 (3) | yes | yes |" in text
    assert "**2.50x** | **3.00x** | **3.00x** | | **4.00x**" in text and "Skipped: cifar10: no data" in text
