"""A study survives its worker: SIGKILL mid-trial -> FAIL (Optuna and MLflow), retried from the last epoch
checkpoint without recomputing the finished epochs; Ctrl-C marks the trial and leaves nothing half-written.

Real `adprune study` processes on a real SQLite Optuna storage and a real MLflow store in tmp_path; the
heartbeat is shortened through the environment (1 s beat, 2 s grace) so that a dead worker shows in seconds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adprune.cli import main
from adprune_core import interrupts
from adprune_core.checkpoint import load_checkpoint, read_state
from study.trials import HEARTBEAT_ENV, heartbeat_settings
from tests.helpers import (
    HEARTBEAT,
    ROOT,
    TINY,
    load,
    mlflow_runs,
    optuna_uri,
    ran,
    trial_path,
    trials_or_none,
    wait_until,
)

EPOCHS = 4


def make_setup(tmp_path, monkeypatch, storage=None):
    for key, value in HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    # longer epochs than TINY's, so that a trial is still running when the test kills its worker
    base = {**TINY["base"], "data": {**TINY["base"]["data"], "train_size": 512}}
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump({**TINY, "base": base, "fixed": {"train.epochs": EPOCHS}}, sort_keys=False))
    args = ["study", "--config", str(config), "--runs-dir", str(tmp_path / "runs"), "--name", "tiny", "--no-progress"]
    return tmp_path / "runs", args + (["--storage", storage] if storage else [])


@pytest.fixture
def study_setup(tmp_path, monkeypatch):
    return make_setup(tmp_path, monkeypatch)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_storage_setup(request, tmp_path, monkeypatch):
    """The same study on the embedded SQLite storage and on a real PostgreSQL server (skips without one)."""
    if request.param == "sqlite":
        return (*make_setup(tmp_path, monkeypatch), None)
    postgres = request.getfixturevalue("postgres")
    url = postgres.url(postgres.create_database("faults"))
    return (*make_setup(tmp_path, monkeypatch, url), url)


def start_worker(args, trials, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adprune", *args, "--trials", str(trials)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **HEARTBEAT}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_for_checkpoint(proc, runs: Path, number: int, log: Path) -> tuple[Path, dict]:
    """Poll until trial ``number`` has checkpointed an epoch (>= 1); returns its folder and the checkpoint's state."""

    def saved():
        folder = trial_path(runs, number)
        state = read_state(folder / "checkpoint") if folder is not None else None
        return (folder, state) if state is not None else None

    return wait_until(proc, log, saved, interval=0.02, what="the trial's first checkpoint")


def summary_epochs(trial_dir: Path) -> list[dict]:
    """The epochs in a trial's summary.json: whole JSON whenever it exists; it does not yet when the process
    died between the first epoch's checkpoint and its summary (the checkpoint comes first)."""
    path = trial_dir / "summary.json"
    return json.loads(path.read_text())["epochs"] if path.is_file() else []


def test_killed_worker_trial_is_failed_retried_and_resumed(any_storage_setup, tmp_path, capsys):
    runs, args, storage = any_storage_setup
    log = tmp_path / "worker.log"
    proc = start_worker(args, 2, log)
    trial_dir, _ = wait_for_checkpoint(proc, runs, 0, log)
    proc.send_signal(signal.SIGKILL)  # mid-trial: the dense baseline, trial 0
    assert proc.wait(30) == -signal.SIGKILL
    saved = read_state(trial_dir / "checkpoint")
    k = saved["epoch"]
    assert 1 <= k < EPOCHS, f"the trial was not killed mid-run (checkpoint of epoch {k})"
    dead = load(runs, storage=storage)
    assert [t.state.name for t in dead] == ["RUNNING"]  # SIGKILL: nothing marked it
    written = summary_epochs(trial_dir)

    started = time.monotonic()
    assert main([*args, "--trials", "2"]) == 0  # the same command again
    session_s = time.monotonic() - started
    out = capsys.readouterr().out
    # (the session waits for the heartbeat to go stale, unless it already is: no assertion on the wait)
    assert "whose worker died as FAIL (worker died (no heartbeat)): 0; each is retried" in out
    assert "resuming study 'tiny': 0 trial(s) done; adding 2 to reach 2" in out

    trials = load(runs, storage=storage)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    killed, retry, new = trials
    assert retry.user_attrs["baseline"] is True and retry.params == {}  # the baseline's retry is the baseline
    assert retry.user_attrs["retry_of"] == 0 and retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["resumed_from_epoch"] == k and "resume_skipped" not in retry.user_attrs
    assert not new.user_attrs.get("baseline") and "retry_of" not in new.user_attrs
    assert "fail_reason" not in killed.user_attrs  # Optuna refuses attrs on finished trials: MLflow says why

    # epochs 1..k came from the checkpoint, not recomputed: identical records, wall times included
    summary = json.loads((trial_path(runs, 1) / "summary.json").read_text())
    assert summary["resumed_from_epoch"] == k and [e["epoch"] for e in summary["epochs"]] == list(range(1, EPOCHS + 1))
    assert summary["epochs"][:k] == saved["summary"]["epochs"]
    assert summary["epochs"][:len(written)] == written
    assert [r["epoch"] for r in retry.user_attrs["records"]] == list(range(1, EPOCHS + 1))
    assert retry.user_attrs["final"]["status"] == "completed"
    assert not (trial_path(runs, 1) / "checkpoint").exists()  # done: deleted
    assert load_checkpoint(trial_dir / "checkpoint").epoch == k  # the dead trial's stays, as evidence

    client, parents, children = mlflow_runs(runs)
    assert parents[0].info.status == "FINISHED" and len(children) == 3
    dead_run, retry_run, _ = children
    assert dead_run.info.run_id == killed.user_attrs["mlflow_run_id"] and dead_run.info.status == "FAILED"
    assert dead_run.data.tags["adprune.fail_reason"] == "worker died (no heartbeat)"
    assert dead_run.data.tags["optuna.trial_state"] == "FAIL" and dead_run.data.tags["adprune.retried"] == "true"
    assert retry_run.info.status == "FINISHED" and retry_run.data.tags["adprune.retry_of"] == "0"
    assert retry.user_attrs["mlflow_run_id"] == retry_run.info.run_id != dead_run.info.run_id  # its own run
    assert retry_run.data.tags["adprune.resumed_from_epoch"] == str(k)
    seconds = client.get_metric_history(retry_run.info.run_id, "seconds")
    assert sorted(m.step for m in seconds) == list(range(1, EPOCHS + 1))  # resumed epochs logged too
    assert [m.value for m in sorted(seconds, key=lambda m: m.step)][:k] == [e["seconds"] for e in saved["summary"]
                                                                             ["epochs"]]
    saved_s = sum(e["seconds"] for e in saved["summary"]["epochs"])
    with capsys.disabled():  # the figures for the record (pytest -s shows them)
        print(f"\nkilled after epoch {k}/{EPOCHS}: {saved_s:.2f} s of training kept; "
              f"second session {session_s:.1f} s")

    # the study is complete: the same command has nothing left to do, and says so
    assert main([*args, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "nothing to run" in out and "1 of them retried after their worker died" in out
    assert len(load(runs, storage=storage)) == 3


def test_ctrl_c_marks_the_trial_says_so_in_one_line_and_it_is_retried_from_its_checkpoint(study_setup, tmp_path,
                                                                                          capsys):
    """Ctrl-C mid-trial (the baseline): the trial becomes FAIL "interrupted" and a retry waits for the next
    session, which resumes it from the checkpoint in its own MLflow run; the interrupted trial does not count
    toward TRIALS (the old code counted it: "1 trial(s) done; already >= 1, nothing to run"). A truncated
    checkpoint makes the retry start from scratch, the reason recorded, instead of a SafetensorError."""
    runs, args = study_setup
    log = tmp_path / "worker.log"
    proc = start_worker(args, 1, log)
    trial_dir, _ = wait_for_checkpoint(proc, runs, 0, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130, log.read_text()
    text = log.read_text()
    assert "adprune: interrupted" in text and interrupts.MESSAGE in text
    k = read_state(trial_dir / "checkpoint")["epoch"]
    assert f"trial 0 interrupted after {k} epoch(s); it will be retried from its checkpoint" in text
    assert "Traceback" not in text and "Trial 0 failed" not in text  # one line, not Optuna's warning
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert summary["final"]["status"] == "interrupted" and len(summary["epochs"]) <= k

    stopped, waiting = load(runs)
    assert stopped.state.name == "FAIL" and stopped.user_attrs["fail_reason"] == "interrupted"
    assert waiting.state.name == "WAITING" and waiting.user_attrs["baseline"] is True
    assert "mlflow_run_id" not in waiting.user_attrs and "fail_reason" not in waiting.user_attrs
    _, parents, children = mlflow_runs(runs)
    assert parents[0].info.status == "KILLED" and [c.info.status for c in children] == ["KILLED"]
    assert children[0].data.tags["adprune.fail_reason"] == "interrupted"
    assert children[0].data.tags["adprune.retried"] == "true"
    assert not [p for p in runs.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left behind
    assert load_checkpoint(trial_dir / "checkpoint").epoch == k  # a whole checkpoint
    damaged = tmp_path / "damaged"
    shutil.copytree(runs, damaged)  # the same state, to resume with a truncated checkpoint below

    assert main([*args, "--trials", "1"]) == 0  # the same command again
    out = capsys.readouterr().out
    assert "resuming study 'tiny': 0 trial(s) done; adding 1 to reach 1" in out and "nothing to run" not in out
    stopped, retry = load(runs)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resumed_from_epoch"] == k and retry.user_attrs["baseline"] is True
    _, _, children = mlflow_runs(runs)
    assert retry.user_attrs["mlflow_run_id"] == children[1].info.run_id != stopped.user_attrs["mlflow_run_id"]
    assert children[1].info.status == "FINISHED" and children[1].data.tags["adprune.resumed_from_epoch"] == str(k)

    checkpoint_file = damaged / trial_dir.relative_to(runs) / "checkpoint" / "checkpoint.safetensors"
    checkpoint_file.write_bytes(checkpoint_file.read_bytes()[:-1000])  # truncated
    damaged_args = [a if a != str(runs) else str(damaged) for a in args]
    assert main([*damaged_args, "--trials", "1"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "SafetensorError" not in captured.err
    stopped, retry = load(damaged)
    assert retry.state.name == "COMPLETE" and retry.user_attrs.get("resumed_from_epoch") is None
    assert "checkpoint" in retry.user_attrs["resume_skipped"] and "is unreadable" in retry.user_attrs["resume_skipped"]
    assert [r["epoch"] for r in retry.user_attrs["records"]] == list(range(1, EPOCHS + 1))  # from scratch
    _, _, children = mlflow_runs(damaged)
    assert retry.user_attrs["mlflow_run_id"] == children[1].info.run_id != stopped.user_attrs["mlflow_run_id"]


def test_heartbeat_settings_from_the_environment(monkeypatch):
    from adprune_core.errors import ConfigError

    for key in HEARTBEAT_ENV:
        monkeypatch.delenv(key, raising=False)
    assert heartbeat_settings() == (10, 30)
    monkeypatch.setenv(HEARTBEAT_ENV[0], "2")
    monkeypatch.setenv(HEARTBEAT_ENV[1], "5")
    assert heartbeat_settings() == (2, 5)
    monkeypatch.setenv(HEARTBEAT_ENV[1], "2")
    with pytest.raises(ConfigError, match="must exceed the heartbeat interval"):
        heartbeat_settings()
    monkeypatch.setenv(HEARTBEAT_ENV[0], "0.5")
    with pytest.raises(ConfigError, match="whole number of seconds"):
        heartbeat_settings()


def test_a_worker_killed_among_several_is_retried_within_the_same_command(tmp_path, monkeypatch):
    """``adprune study --workers 2``: SIGKILL one worker mid-trial. Its trial is failed once its heartbeat is
    stale and retried from its checkpoint by the process that starts a trial next (the other worker, or the
    command itself after its workers: it notices the exit), and the study ends with exactly the trials asked
    for."""
    runs, args = make_setup(tmp_path, monkeypatch)
    log = tmp_path / "study.log"
    proc = start_worker([*args, "--workers", "2"], 5, log)

    def kill_a_worker_mid_trial():
        for t in trials_or_none(optuna_uri(runs)):
            folder = trial_path(runs, t.number)
            state = read_state(folder / "checkpoint") if folder is not None else None
            if (t.state.name == "RUNNING" and t.number >= 1 and state is not None
                    and "worker" in t.user_attrs):  # a worker's trial, mid-run
                pid = int(t.user_attrs["worker"].rpartition(":")[2])
                os.kill(pid, signal.SIGKILL)
                return t.number, pid, state["epoch"]
        return None

    number, pid, epoch = wait_until(proc, log, kill_a_worker_mid_trial, interval=0.02,
                                    what="a worker's trial to kill mid-run")
    assert proc.wait(300) == 0, log.read_text()
    text = log.read_text()
    assert "ended early" in text and "killed by SIGKILL" in text
    assert "database is locked" not in text

    trials = load(runs)
    killed = trials[number]
    assert killed.state.name == "FAIL" and killed.user_attrs["worker"].endswith(f":{pid}")
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.state.name in ("COMPLETE", "PRUNED") and retry.user_attrs["resumed_from_epoch"] >= epoch
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5 and len(ran(trials)) == 6  # exactly the five asked for, plus the dead one
    _, parents, children = mlflow_runs(runs)
    assert parents[0].info.status == "FINISHED"
    dead_run = [r for r in children if r.info.run_id == killed.user_attrs["mlflow_run_id"]][0]
    assert dead_run.info.status == "FAILED"
    assert dead_run.data.tags["adprune.fail_reason"] == "worker died (no heartbeat)"
