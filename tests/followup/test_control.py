"""``adprune control``: the uniform-width search, the control config, and every kind of control over seeds end to
end (scratch, uniform, random channels, repeat), resumed, and read back by the report."""

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from adprune_core.config import ModelConfig, config_to_dict
from adprune_core.costs import inference_flops
from adprune_core.errors import ConfigError
from adprune_core.models import build_model
from followup.control import (
    CONTRACT_METRICS,
    WidthMatch,
    control_config,
    match_flops,
    plan_controls,
    uniform_width_mult,
)
from reports.load import load_study_data
from reports.render import render_markdown
from reports.report import build_report
from tests.helpers import optuna_uri, tiny_config, tracking_uri
from tests.pick_study import NAME, adprune, build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory)


def steps(m: float) -> int:
    """A monotone step function like FLOPs(width_mult): 1000 x round(100 m)^2."""
    return 1000 * round(100 * m) ** 2


@pytest.mark.parametrize(("target", "want"), [
    (225_000, 0.15),  # exactly a step: 15^2 x 1000
    (240_000, 0.15),  # 15k above 15^2 x 1000, 16k below 16^2 x 1000
    (241_000, 0.16),  # 16k above, 15k below
    (1_000, 0.01),  # the smallest width_mult allowed
    (40_000_000, 2.0),  # beyond the first guess (hi = 1): hi doubles
])
def test_match_flops_finds_the_nearest_step(target, want):
    found = match_flops(steps, target)
    best = min((steps(k / 100) for k in range(1, 1601)), key=lambda f: (abs(f - target), -f))
    assert found.flops == best and found.target_flops == target
    assert round(100 * found.width_mult) == round(100 * want)


def test_match_flops_beyond_the_range_stops_at_its_ends():
    assert match_flops(steps, 1).width_mult == 0.01  # even the narrowest network is bigger
    huge = match_flops(steps, 10**12)
    assert huge.width_mult == 16.0 and huge.flops == steps(16.0)


def test_uniform_width_matches_a_vgg11_flops_target_within_a_few_percent():
    cfg = ModelConfig(name="vgg11", width_mult=1.0)
    dense = inference_flops(build_model(cfg, 10, (3, 32, 32)), (3, 32, 32))
    for fraction in (0.1, 0.3, 0.6):
        match = uniform_width_mult(cfg, 10, (3, 32, 32), int(fraction * dense))
        assert abs(match.relative_error) < 0.03, (fraction, match)
        assert match.width_mult < 1.0 and match.evaluations < 40
        built = build_model(ModelConfig(name="vgg11", width_mult=match.width_mult), 10, (3, 32, 32))
        assert inference_flops(built, (3, 32, 32)) == match.flops


def test_torchvision_models_have_no_uniform_control():
    with pytest.raises(ConfigError, match="no uniform-width control; run the scratch control only"):
        uniform_width_mult(ModelConfig(name="torchvision:resnet18"), 10, (3, 32, 32), 1000)


def test_control_config_turns_pruning_off_and_keeps_the_rest():
    trial = {"data": {"name": "synthetic"}, "model": {"name": "vgg11", "width_mult": 0.5},
             "train": {"epochs": 7, "seed": 3}, "prune": {"schedule": "fixed", "epochs": [2, 4], "width_scale": 1.2}}
    cfg = control_config(trial)
    assert cfg.prune.schedule == "none" and cfg.prune.epochs == () and cfg.prune.width_scale == 1.2
    assert cfg.train.epochs == 7 and cfg.train.seed == 3 and cfg.model.width_mult == 0.5
    assert control_config(trial, width_mult=0.2).model.width_mult == 0.2
    assert trial["prune"]["schedule"] == "fixed"  # not mutated


def test_plan_controls_kinds_by_seed_and_what_is_left_out():
    class Trial:
        number = 5

        def __init__(self, transfer):
            cfg = tiny_config("train.epochs=4", "prune.schedule=fixed", "prune.epochs=[1,2]", "train.seed=7",
                              f"prune.transfer={transfer}")
            self.user_attrs = {"config": config_to_dict(cfg)}

    arch = {"group_widths": {"features.0": 3}, "history": [{"epoch": 1, "kept_idxs": {"features.0": [0, 2, 5, 6]}},
                                                           {"epoch": 2, "kept_idxs": {"features.0": [1, 2, 3]}}]}
    match = WidthMatch(0.05, 100, 101, 9)
    jobs = plan_controls(Trial("inherit"), arch, ["repeat", "random", "scratch", "uniform"], [7, 8], match)
    assert [(j.kind, j.seed) for j in jobs] == [("scratch", 7), ("scratch", 8), ("uniform", 7), ("uniform", 8),
                                                ("random", 7), ("random", 8), ("repeat", 8)]  # repeat 7: the trial
    assert all(j.cfg.train.seed == j.seed for j in jobs)
    scratch, uniform, random_, repeat = jobs[0], jobs[2], jobs[4], jobs[6]
    assert scratch.init_widths == {"features.0": 3} and scratch.cfg.prune.schedule == "none"
    assert uniform.cfg.model.width_mult == 0.05 and uniform.cfg.prune.schedule == "none"
    assert random_.width_plan == {1: {"features.0": 4}, 2: {"features.0": 3}}
    p = random_.cfg.prune
    assert (p.schedule, p.epochs, p.select, p.min_gain, p.channel_density_min) == ("fixed", (1, 2), "random", 0, 0)
    assert repeat.cfg.prune.select == "density" and repeat.width_plan is None
    reinit = plan_controls(Trial("reinit"), arch, ["random", "scratch"], [7], match)
    assert [j.kind for j in reinit] == ["scratch"]  # re-initialised at every cut: its channel choice cannot matter


@pytest.fixture(scope="module")
def controlled(tiny):
    """``adprune control`` run once for every kind over two seeds on the shared tiny study's pruned trial; its
    output, and the study's control runs by (kind, seed)."""
    mp = pytest.MonkeyPatch()
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            code = adprune(mp, "control", "--runs-dir", str(tiny.runs), "--study", NAME, "--trial", str(tiny.pruned),
                           "--kinds", "scratch,uniform,random,repeat", "--seeds", "2")
    finally:
        mp.undo()
    assert code == 0, buf.getvalue()
    client = MlflowClient(tracking_uri=tracking_uri(tiny.runs))
    exp = client.get_experiment_by_name(NAME)
    found = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`adprune.role` = 'control' and tags.`adprune.control_of` = '{tiny.pruned}'"))
    runs = {(r.data.tags["adprune.control_kind"], int(r.data.tags["adprune.control_seed"])): r for r in found}
    return buf.getvalue(), runs, client


def control_summary(tiny, kind: str, seed: int) -> dict:
    path = tiny.runs / "studies" / NAME / "controls" / f"trial-{tiny.pruned:04d}-{kind}-s{seed}" / "summary.json"
    return json.loads(path.read_text())


def the_trial(tiny):
    return optuna.load_study(study_name=NAME, storage=optuna_uri(tiny.runs)).trials[tiny.pruned]


def test_every_kind_over_seeds_is_a_tracked_run_with_the_contract(tiny, controlled):
    out, runs, client = controlled
    n = tiny.pruned
    # seeds 0 and 1 of every kind, but no repeat at seed 0: that is the trial itself
    assert set(runs) == {("scratch", 0), ("scratch", 1), ("uniform", 0), ("uniform", 1), ("random", 0),
                         ("random", 1), ("repeat", 1)}
    study = optuna.load_study(study_name=NAME, storage=optuna_uri(tiny.runs))
    trial = study.trials[n]
    final = trial.user_attrs["final"]
    for (kind, seed), run in runs.items():
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{n:04d}-{kind}-s{seed}"
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
        assert {f"final/{k}" for k in CONTRACT_METRICS} <= set(run.data.metrics)
        m = {k: run.data.metrics[f"final/{k}"] for k in CONTRACT_METRICS}
        assert m["compression_params"] == pytest.approx(final["params_dense"] / m["params"])
        assert m["compression_flops"] == pytest.approx(final["flops_dense"] / m["flops"])
        assert len(client.get_metric_history(run.info.run_id, "val_top1")) == trial.user_attrs["epochs"]
        assert run.data.params["train.seed"] == str(seed) and run.data.params["data.holdout"] == "0.1"
        summary = control_summary(tiny, kind, seed)
        assert summary["final"]["status"] == "completed"
        assert summary["final"]["test_top1"] == run.data.metrics["final/test_top1"]
        assert summary["config"]["train"]["epochs"] == trial.user_attrs["config"]["train"]["epochs"]
        assert (run.data.params["prune.schedule"] == "none") == (kind in ("scratch", "uniform"))
    # the scratch control is the trial's final architecture, freshly trained
    arch = json.loads((Path(trial.user_attrs["out_dir"]) / "model" / "model.json").read_text())
    scratch = runs[("scratch", 0)].data.metrics
    assert scratch["final/params"] == final["params"] and scratch["final/flops"] == final["flops"]
    assert control_summary(tiny, "scratch", 0)["init_widths"] == arch["group_widths"]
    # the uniform control has (nearly) the trial's FLOPs with one width multiplier
    width_mult = float(runs[("uniform", 0)].data.params["control.width_mult"])
    assert width_mult < trial.user_attrs["config"]["model"]["width_mult"]
    assert abs(runs[("uniform", 0)].data.metrics["final/flops"] / final["flops"] - 1) < 0.1
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["adprune.control_scratch"] in \
        {runs[("scratch", 0)].info.run_id, runs[("scratch", 1)].info.run_id}
    assert f"trial {n} beside its controls" in out and "does the per-layer sizing beat a uniform width" in out


def test_the_random_control_replays_the_trials_widths_with_random_channels(tiny, controlled):
    trial_summary = json.loads((Path(the_trial(tiny).user_attrs["out_dir"]) / "summary.json").read_text())
    theirs = trial_summary["prune_events"]
    for seed in (0, 1):
        replay = control_summary(tiny, "random", seed)
        mine = replay["prune_events"]
        assert replay["config"]["prune"]["select"] == "random"
        assert [e["epoch"] for e in mine] == [e["epoch"] for e in theirs]
        assert [e["widths_after"] for e in mine] == [e["widths_after"] for e in theirs]  # the same widths ...
        assert replay["final"]["flops"] == trial_summary["final"]["flops"]
        cut = [g for g, kept in theirs[0]["kept_idxs"].items() if len(kept) < theirs[0]["groups"][g]["width_before"]]
        assert any(mine[0]["kept_idxs"][g] != theirs[0]["kept_idxs"][g] for g in cut)  # ... other channels
    first = control_summary(tiny, "random", 0)["prune_events"][0]["kept_idxs"]
    assert first != control_summary(tiny, "random", 1)["prune_events"][0]["kept_idxs"]  # the seed draws them


def test_finished_controls_are_skipped_and_the_report_shows_their_spread(tiny, controlled, monkeypatch, capsys):
    _, runs, client = controlled
    assert adprune(monkeypatch, "control", "--runs-dir", str(tiny.runs), "--study", NAME, "--trial",
                   str(tiny.pruned), "--uniform", "--seeds", "2") == 0
    out = capsys.readouterr().out
    assert out.count("finished before") == 4 and "epochs) ..." not in out
    exp = client.get_experiment_by_name(NAME)
    assert len(client.search_runs([exp.experiment_id], filter_string="tags.`adprune.role` = 'control'")) == len(runs)

    report = build_report(load_study_data(tiny.runs, NAME))
    summaries = report.summaries[tiny.pruned]
    assert set(summaries) == {"scratch", "uniform", "random", "repeat"}
    scratch = [runs[("scratch", s)].data.metrics["final/val_top1"] for s in (0, 1)]
    assert summaries["scratch"].stats.n == 2
    assert summaries["scratch"].stats.mean["val_top1"] == pytest.approx(sum(scratch) / 2)
    assert summaries["scratch"].stats.sd["val_top1"] == pytest.approx(abs(scratch[0] - scratch[1]) / 2 ** 0.5)
    own = [the_trial(tiny).user_attrs["final"]["val_top1"], runs[("repeat", 1)].data.metrics["final/val_top1"]]
    assert summaries["repeat"].stats.n == 2
    assert summaries["repeat"].stats.mean["val_top1"] == pytest.approx(sum(own) / 2)
    gain = sum(own) / 2 - sum(scratch) / 2
    assert summaries["scratch"].vs_trial["val_top1"].diff == pytest.approx(gain)
    row = report.row(tiny.pruned)
    assert row["scratch_seeds"] == 2 and row["val_top1_gain_vs_scratch"] == pytest.approx(gain)
    md = render_markdown(report)
    assert "## Controls: did the method's choices matter?" in md and " ± " in md


def test_knee_controls_the_knee_of_the_pruned_pareto_trials(tiny, controlled, monkeypatch, capsys):
    assert adprune(monkeypatch, "control", "--runs-dir", str(tiny.runs), "--study", NAME, "--knee",
                   "--kinds", "scratch") == 0
    out = capsys.readouterr().out
    (number,) = {int(m) for m in re.findall(r"scratch control of trial (\d+), seed 0", out)}
    trial = optuna.load_study(study_name=NAME, storage=optuna_uri(tiny.runs)).trials[number]
    assert not trial.user_attrs.get("baseline") and trial.user_attrs["final"]["prune_rounds"] > 0


@pytest.mark.parametrize(("which", "needle"), [
    ("baseline", "is the dense baseline: it has no pruned architecture to retrain"),
    ("failed", "is FAIL"),
    ("none", "--trial N is required (make control TRIAL=n)"),
    ("kinds", "--kinds: 'scratch,bogus' must name control kinds from scratch, uniform, random, repeat"),
    ("seeds", "--seeds: 0 must be >= 1"),
])
def test_bad_controls_are_one_line_errors(tiny, capsys, monkeypatch, which, needle):
    pruned = ["--trial", str(tiny.pruned)]
    number = {"baseline": ["--trial", "0"], "failed": ["--trial", str(tiny.failed)], "none": [],
              "kinds": [*pruned, "--kinds", "scratch,bogus"], "seeds": [*pruned, "--seeds", "0"]}[which]
    assert adprune(monkeypatch, "control", "--runs-dir", str(tiny.runs), *number) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: ") and len(err.splitlines()) == 1 and needle in err
