"""Several worker processes sharing one study, each running until the study holds its target: exact trial
count, no duplicates, baseline first; a trial that starts when the study already holds its target is not run."""

import json
import subprocess
import sys

import optuna
import pytest
import yaml

from adprune.cli import main
from adprune_core.errors import ConfigError
from study.cli import worker_envs
from study.runner import _report, format_report
from study.space import study_config_from_dict
from study.stores import Stores
from study.trials import TARGET_HELD_REASON, counted_trials, held_before, optuna_storage
from study.workers import StopAtTarget, optimize_until_target
from tests.helpers import ROOT, TINY, load, mlflow_runs, ran, study_cli, trials_or_none, wait_until, write_study


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() stands for another process's optimize
def test_of_two_trials_started_at_once_for_the_last_place_the_higher_numbered_is_not_run(tmp_path):
    """A study of target 3 holds two trials; two processes each start one (trials 2 and 3, RUNNING): trial 2
    has a place, trial 3 finds three ahead of it, ends FAIL without running, and does not count."""
    study = optuna.create_study(study_name="race", storage=optuna_storage(Stores.resolve(tmp_path, env={})))
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    first = study.ask()  # another process's trial, started a moment earlier
    assert held_before(study.get_trials(), first.number) == 2
    ran = []

    def objective(trial):
        ran.append(trial.number)
        return 1.0

    study.optimize(StopAtTarget(3).skip_surplus(objective), n_trials=1, catch=(Exception,))
    assert ran == []  # trial 3 started with three ahead of it (two done, trial 2 running): not run
    surplus = study.get_trials()[3]
    assert surplus.state.name == "FAIL" and surplus.user_attrs["fail_reason"] == TARGET_HELD_REASON
    study.tell(first, 1.0)
    assert [t.number for t in counted_trials(study.get_trials())] == [0, 1, 2]  # exactly the target
    # a process that comes to the full study starts no trial at all
    optimize_until_target(study, objective, 3, lambda s, t: None)
    assert ran == [] and len(study.get_trials()) == 4
    # the closing summary counts it apart from the failed trials
    outcome = _report(study, study_config_from_dict(TINY), "race", finished=2, ran=1)
    assert outcome.not_run == [3]
    assert "4 trials (3 complete, 0 pruned, 0 failed, 1 not run (started when the study already held its " \
           "target)); ran 1 now" in format_report(outcome, ("val_top1",))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_every_process_stops_at_the_target_running_trials_counted(tmp_path):
    """``optimize_until_target`` runs trials until the study holds its target, another process's RUNNING trial
    counted (optuna#3518: a ``MaxTrialsCallback`` without RUNNING overshoots by the number of processes)."""
    study = optuna.create_study(study_name="stop", storage=optuna_storage(Stores.resolve(tmp_path, env={})))
    study.tell(study.ask(), 1.0)
    study.ask()  # running elsewhere
    after = []
    optimize_until_target(study, lambda trial: 1.0, 5, lambda s, t: after.append(t.number))
    assert after == [2, 3, 4]  # 1 done + 1 running + 3 here = 5
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "RUNNING", "COMPLETE", "COMPLETE", "COMPLETE"]


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
    trials = ran(load(runs))  # a trial two workers raced to start past the target is not run (test above)
    assert len(trials) == 5 and len({t.number for t in trials}) == 5  # exactly five, none lost or duplicated
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    baseline, others = trials[0], trials[1:]
    assert baseline.number == 0 and baseline.user_attrs.get("baseline") and baseline.state.name == "COMPLETE"
    assert all(baseline.datetime_complete <= t.datetime_start for t in others)  # the baseline ran first
    _, parents, children = mlflow_runs(runs)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [int(r.data.tags["optuna.trial_number"]) for r in children] == [t.number for t in trials]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # resuming with more workers adds exactly the difference
    assert study_cli(write_study(tmp_path), runs, 7, "tiny", "--workers", "2") == 0
    again = ran(load(runs))
    assert len(again) == 7 and [t.number for t in again[:5]] == [t.number for t in trials]


POP_WAITING = """
import json, sys
import optuna
from study.trials import optuna_storage
from study.runner import _report, format_report
from study.space import study_config_from_dict
from study.stores import Stores

optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=optuna_storage(Stores.resolve(sys.argv[1], env={})))
ran = []
while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
    trial = study.ask()  # pops a WAITING trial when there is one
    ran.append(trial.number)
    study.tell(trial, 1.0)
print(json.dumps(ran))
"""


def test_concurrent_workers_never_pop_the_same_waiting_trial(tmp_path):
    """Four processes drain a queue of 60 enqueued trials from one SQLite file as fast as they can. With
    Python's default SQLite transactions two of them can both take the same WAITING trial (seen here:
    'Cannot tell a COMPLETE trial'); ``study.stores`` serialises transactions so each runs exactly once."""
    study = optuna.create_study(study_name="queue", storage=optuna_storage(Stores.resolve(tmp_path, env={})))
    for x in range(60):
        study.enqueue_trial({"x": x})
    procs = [subprocess.Popen([sys.executable, "-c", POP_WAITING, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(err for _, err in results)
    ran = [n for out, _ in results for n in json.loads(out)]
    assert len(ran) == len(set(ran))  # no trial ran twice
    assert set(range(60)) <= set(ran)  # every enqueued trial ran (a few new ones may follow the last)
    assert all(t.state.name == "COMPLETE" for t in study.get_trials())


def test_four_workers_complete_a_study_without_losing_or_duplicating_trials(tmp_path, capfd):
    runs = tmp_path / "runs"
    assert study_cli(write_study(tmp_path), runs, 9, "tiny", "--workers", "4") == 0
    out, err = capfd.readouterr()  # this process's output and the four workers'
    assert "starting 4 worker processes, each running trials until the study holds its target" in out
    assert "database is locked" not in out + err and "Traceback" not in out + err
    trials = ran(load(runs))
    assert len(trials) == 9 and len({t.number for t in trials}) == 9
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    workers = {t.user_attrs["worker"] for t in trials[1:]}  # host:pid of the process that ran each
    # no quotas: the workers share the eight trials as they come (each of them, on an idle machine)
    assert 2 <= len(workers) <= 4 and trials[0].user_attrs["worker"] not in workers
    _, parents, children = mlflow_runs(runs)
    assert [int(r.data.tags["optuna.trial_number"]) for r in children] == [t.number for t in trials]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children) and parents[0].info.status == "FINISHED"


def test_a_worker_that_joins_shares_the_study_and_everyone_stops_at_its_target(tmp_path, capsys):
    """``make study TRIALS=8`` runs in one process; ``make worker`` joins from another runtime folder (another
    machine, sharing the stores by URL) while it runs. Between them they run the eight trials (eight, so that the
    study process still has several left when the worker is ready, even on a loaded machine): the study
    process stops early because the joined worker did part of its work; at most one trial more."""
    config = tmp_path / "long.yaml"
    base = {**TINY["base"], "data": {**TINY["base"]["data"], "train_size": 1024}}
    config.write_text(yaml.safe_dump({**TINY, "base": base}, sort_keys=False))
    runs = tmp_path / "runs"
    stores = Stores.resolve(runs, env={})
    log = tmp_path / "study.log"
    proc = subprocess.Popen([sys.executable, "-m", "adprune", "study", "--config", str(config), "--runs-dir",
                             str(runs), "--name", "tiny", "--trials", "8", "--no-progress"], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_until(proc, log, lambda: [t for t in trials_or_none(stores) if t.state.name == "COMPLETE"],
               what="the baseline to complete")
    assert main(["worker", "--study", "tiny", "--runs-dir", str(tmp_path / "elsewhere"), "--storage",
                 stores.optuna_url, "--tracking", stores.tracking_uri]) == 0
    assert proc.wait(300) == 0, log.read_text()
    trials = [t for t in load(runs) if t.user_attrs.get("fail_reason") != TARGET_HELD_REASON]  # those that ran
    joined = [t for t in trials if t.user_attrs["out_dir"].startswith(str(tmp_path / "elsewhere"))]
    here = [t for t in trials if t.user_attrs["out_dir"].startswith(str(runs))]
    assert joined and len(here) < 8  # both did part of the study
    assert len(joined) + len(here) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert "until it holds 8 trial(s)" in capsys.readouterr().out

