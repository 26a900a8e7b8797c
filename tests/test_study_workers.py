"""Several worker processes sharing one study: exact trial count, no duplicates, baseline first."""

import pytest

from adprune_core.errors import ConfigError
from study.cli import worker_envs
from study.runner import split_quotas
from tests.test_study_run import load, mlflow_runs, study_cli, write_study


@pytest.mark.parametrize(("trials", "workers", "expected"),
                         [(6, 3, [2, 2, 2]), (7, 3, [3, 2, 2]), (2, 4, [1, 1]), (0, 2, [])])
def test_split_quotas(trials, workers, expected):
    assert split_quotas(trials, workers) == expected


def test_worker_envs():
    assert worker_envs(None, None, 1, 8) == [{}]
    assert worker_envs(4, None, 1, 8) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 4
    assert worker_envs(None, "0,1", 2, 8) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "0", "1", "1")]
    assert worker_envs(4, "0,1", 2, 8) == worker_envs(None, "0,1", 2, 8)


@pytest.mark.parametrize(("args", "message"), [
    ((3, "0,1", 2), "--workers 3 does not match"),
    ((None, "0,0", 1), "distinct GPU numbers"),
    ((None, "a", 1), "distinct GPU numbers"),
    ((0, None, 1), "--workers: 0 must be >= 1"),
    ((None, "0", 0), "--workers-per-gpu: 0 must be >= 1"),
])
def test_worker_envs_bad_input(args, message):
    with pytest.raises(ConfigError, match=message):
        worker_envs(*args, cpu_count=8)


def test_two_workers_share_one_study(tmp_path):
    runs = tmp_path / "runs"
    assert study_cli(write_study(tmp_path), runs, 5, "tiny", "--workers", "2") == 0
    trials = load(runs)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]  # exactly five, none lost or duplicated
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    baseline, others = trials[0], trials[1:]
    assert baseline.user_attrs.get("baseline") and baseline.state.name == "COMPLETE"
    assert all(baseline.datetime_complete <= t.datetime_start for t in others)  # the baseline ran first
    _, parents, children = mlflow_runs(runs)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [int(r.data.tags["optuna.trial_number"]) for r in children] == [0, 1, 2, 3, 4]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # resuming with more workers adds exactly the difference
    assert study_cli(write_study(tmp_path), runs, 7, "tiny", "--workers", "2") == 0
    assert sorted(t.number for t in load(runs)) == list(range(7))
