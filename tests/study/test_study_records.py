"""Records that must never be lost or misread: concurrent sessions, a lost store file, studies that never
completed a trial, and commands refused before they write anything. Real ``adprune study`` processes (or
``main``) on real SQLite stores in tmp_path."""

import json
import os
import subprocess
import sys

import optuna
import pytest

from adprune.cli import main
from adprune_core.data import load_dataset
from study.objective import Objective
from study.space import load_study_config
from study.trials import TARGET_ATTR, open_study
from tests.helpers import HEARTBEAT, ROOT, load, mlflow_runs, optuna_uri, study_cli, trial_path, write_study


def test_two_sessions_started_together_on_a_fresh_folder_share_one_study_and_draw_their_own_params(tmp_path):
    """``make study`` twice at once on a new runs folder: the stores are created once (the second used to crash
    in MLflow's database creation), there is one baseline and one MLflow parent run, and no two trials share
    their params (both sessions used to reseed the sampler alike and draw the same suggestions)."""
    config, runs = write_study(tmp_path), tmp_path / "runs"
    cmd = [sys.executable, "-m", "adprune", "study", "--config", str(config), "--runs-dir", str(runs),
           "--name", "tiny", "--trials", "6", "--no-progress"]
    logs = [tmp_path / f"session-{i}.log" for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **HEARTBEAT}, stdout=log.open("w"),
                              stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait(900) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(texts)
    assert not any("Traceback" in t or "migration" in t.lower() for t in texts)
    trials = load(runs)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and 6 <= len(trials) <= 7
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    drawn = [json.dumps(t.params, sort_keys=True) for t in trials if not t.user_attrs.get("baseline")]
    assert len(drawn) == len(set(drawn)), drawn  # every trial drew its own params
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both sessions ran trials
    _, parents, children = mlflow_runs(runs)
    assert len(parents) == 1 and len(children) == len(trials)


def test_an_empty_store_file_is_said_loudly_and_the_earlier_trial_folders_are_kept(tmp_path, capsys):
    """A 0-byte ``optuna.db`` (a failed copy, a full disk) opens as a new store; the study made again under
    the same name writes into a folder of its own, never over the earlier study's trial folders."""
    config, runs = write_study(tmp_path), tmp_path / "runs"
    assert study_cli(config, runs, 1) == 0
    first = trial_path(runs, 0)
    before = (first / "summary.json").read_bytes()
    (runs / "optuna.db").write_bytes(b"")
    capsys.readouterr()
    assert study_cli(config, runs, 1) == 0
    out = capsys.readouterr().out
    assert f"WARNING: the store file {runs.resolve() / 'optuna.db'} was empty (0 bytes)" in out
    assert (first / "summary.json").read_bytes() == before  # the earlier run's record is intact
    (trial,) = load(runs)
    assert trial.state.name == "COMPLETE" and trial.user_attrs["out_dir"] != str(first)
    assert len(list(runs.glob("studies/tiny/*/trial-0000/summary.json"))) == 2


def test_a_trial_never_writes_into_a_folder_that_holds_files(tmp_path):
    cfg = load_study_config(write_study(tmp_path))
    study = open_study(cfg, "tiny", tmp_path / "runs")
    other = tmp_path / "trials" / "trial-0000"
    other.mkdir(parents=True)
    (other / "summary.json").write_text('{"another": "run"}')
    objective = Objective(cfg, load_dataset(cfg.trainer.data), tmp_path / "trials", progress=False)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    (trial,) = study.get_trials()
    assert trial.state.name == "FAIL" and "already holds files (summary.json)" in trial.user_attrs["fail_reason"]
    assert (other / "summary.json").read_text() == '{"another": "run"}' and sorted(os.listdir(other)) == [
        "summary.json"]


def test_a_study_with_no_complete_trial_never_says_nothing_to_run(tmp_path, capsys):
    config, runs = write_study(tmp_path), tmp_path / "runs"
    diverges = ["--set", "train.lr=1.0e12"]
    assert study_cli(config, runs, 1, "tiny", *diverges) == 0  # the baseline diverges: FAIL
    assert [t.state.name for t in load(runs)] == ["FAIL"]
    capsys.readouterr()
    assert study_cli(config, runs, 1, "tiny", *diverges) == 1
    out = capsys.readouterr().out
    assert "nothing to run" not in out
    assert "holds 1 trial(s) and none of them completed (1 failed); nothing was run: fix why they failed" in out
    assert "make study TRIALS=2 or more" in out


@pytest.mark.parametrize(("args", "needle"), [
    (["--name", "../../escaped"], "--name: '../../escaped' is not a valid study name; a study name is 1 to 100"),
    (["--name", "x" * 300], "--name: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (300 characters) is not a valid"),
    (["--name", "has space"], "--name: 'has space' is not a valid study name"),
    (["--set", "data.name=imagefolder", "--data", "NOWHERE"], "NOWHERE"),
])
def test_refused_commands_write_nothing(tmp_path, capsys, args, needle):
    config, runs = write_study(tmp_path), tmp_path / "runs"
    args = [str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in args]
    argv = ["study", "--config", str(config), "--runs-dir", str(runs), "--trials", "1", "--no-progress", *args]
    if "--name" not in args:
        argv += ["--name", "tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: ") and len(err.splitlines()) == 1
    assert needle.replace("NOWHERE", str(tmp_path / "nowhere")) in err
    assert not runs.exists() and not (tmp_path.parent / "escaped").exists()  # no store, no study, no folder


def test_a_refused_session_leaves_the_study_as_it_was(tmp_path, capsys):
    """A data error in a later session: the study's target (what joined workers run to) and trials stay."""
    config, runs = write_study(tmp_path), tmp_path / "runs"
    assert study_cli(config, runs, 1) == 0
    assert study_cli(config, runs, 5, "tiny", "--set", "data.name=imagefolder", "--data", str(tmp_path / "no")) == 2
    study = optuna.load_study(study_name="tiny", storage=optuna_uri(runs))
    assert study.user_attrs[TARGET_ATTR] == 1 and len(study.trials) == 1
    assert main(["worker", "--study", "tiny", "--runs-dir", str(tmp_path / "fresh")]) == 2
    assert "no Optuna storage at " in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()  # joining nothing created nothing


def test_a_trial_record_writes_only_what_it_sets_and_reads_back_typed():
    """``TrialRecord``: the attr names are its fields; a partial record writes just its fields (``final`` with the
    compression figures beside it); read back, every field is typed; a broken ``final`` is one RecordError line."""
    from types import SimpleNamespace

    from adprune_core.records import FinalMetrics, RecordError
    from study.trial_record import COMPRESSION_FLOPS_ATTR, FINAL_ATTR, RECORDS_ATTR, TrialRecord

    final = FinalMetrics(status="completed", epochs_run=3, val_top1=0.5, params=10, flops=20, train_flops_cum=30,
                         params_dense=40, flops_dense=80, prune_rounds=1, test_top1=0.45)
    assert TrialRecord(retry_of=0).to_attrs() == {"retry_of": 0}
    assert TrialRecord(never_pruned=False).to_attrs() == {"never_pruned": False}  # False is recorded, None is not
    attrs = TrialRecord(baseline=True, final=final, records=({"epoch": 1, "val_top1": 0.4},)).to_attrs()
    assert attrs[FINAL_ATTR] == final.to_dict() and attrs[COMPRESSION_FLOPS_ATTR] == 4.0
    assert attrs[RECORDS_ATTR] == [{"epoch": 1, "val_top1": 0.4}] and attrs["baseline"] is True
    back = TrialRecord.from_trial(SimpleNamespace(number=7, user_attrs={**attrs, "unknown": 1}))
    assert back == TrialRecord(baseline=True, final=final, records=({"epoch": 1, "val_top1": 0.4},))
    assert back.pruned and back.compression_flops == 4.0 and TrialRecord().compression_flops is None
    assert back.savings(TrialRecord(final=final)).accuracy_drop == 0.0
    with pytest.raises(RecordError) as exc:
        TrialRecord.from_trial(SimpleNamespace(number=7, user_attrs={"final": {"val_top1": 0.5}}))
    assert "trial 7's user attr 'final' lacks the field" in str(exc.value) and "\n" not in str(exc.value)
