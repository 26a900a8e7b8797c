"""A study across machines, as the README's recipe sets it up: Optuna on a real PostgreSQL server, MLflow on
a real tracking server (``adprune mlflow-server``, itself backed by PostgreSQL and an artifact folder),
worker processes, a worker that joins with ``adprune worker``, and the report read back from both. Every
request to the tracking server names it by this machine's host name (the Host header MLflow >= 3.5 checks).

The PostgreSQL server is started by the test session on loopback (``tests/postgres.py``); without
Debian's postgresql package these tests skip, saying why."""

import json
import os
import socket
import subprocess
import sys

import optuna
import pytest
import requests
from mlflow.tracking import MlflowClient

from adprune.cli import main
from study.stores import TRACKING_ENV
from tests.helpers import ROOT, artifact_paths, ran, split_runs, wait_healthy, write_study
from tests.postgres import free_port


def loopback_name() -> tuple[str, str]:
    """This machine's host name and the loopback address it resolves to: clients then send the name in the
    Host header, as machines that reach a tracking server by name do. Skips where the name is not loopback."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if not address.startswith("127."):
        pytest.skip(f"the host name {name!r} does not resolve to a loopback address ({address or 'not at all'}); "
                    "the test needs a name that reaches a server bound to loopback")
    return name, address


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``adprune mlflow-server`` on loopback, its runs in a fresh PostgreSQL database (one for this file), reached
    by this machine's host name (MLflow >= 3.5 refuses Host names it does not allow); ``mlflow-host`` is allowed
    as ``make mlflow-server ALLOWED_HOSTS=mlflow-host`` would."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    name, address = loopback_name()
    port = free_port()
    backend = postgres.url(postgres.create_database("mlflow"))
    log = tmp_path / "mlflow-server.log"
    proc = subprocess.Popen([sys.executable, "-m", "adprune", "mlflow-server", "--runs-dir", str(tmp_path),
                             "--backend-store", backend, "--host", address, "--port", str(port), "--workers", "1",
                             "--allowed-hosts", "mlflow-host"],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{name}:{port}"
    wait_healthy(proc, log, url)
    yield url, log, tmp_path
    os.killpg(proc.pid, 2)  # Ctrl-C to the server and its workers
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_the_server_answers_the_names_it_allows_and_refuses_others(mlflow_server):
    url, _, _ = mlflow_server
    port = url.rpartition(":")[2]
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    status = {host: requests.get(api, headers={"Host": f"{host}:{port}"}, timeout=10).status_code
              for host in (socket.gethostname(), "mlflow-host", "localhost", "attacker.example")}
    assert status == {socket.gethostname(): 200, "mlflow-host": 200, "localhost": 200, "attacker.example": 403}
    origin = {"Content-Type": "application/json"}
    ui = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "from-the-ui"},
                       headers={**origin, "Origin": url}, timeout=10)  # the UI opened at the host's name
    assert ui.status_code == 200, ui.text
    other = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "from-elsewhere"},
                          headers={**origin, "Origin": "http://attacker.example"}, timeout=10)
    assert other.status_code == 403


def test_study_on_postgresql_with_an_mlflow_server_and_a_joining_worker(postgres, mlflow_server, tmp_path, capsys):
    tracking, server_log, server_dir = mlflow_server
    assert tracking.startswith(f"http://{socket.gethostname()}:")  # every request carries the name
    storage = postgres.url(postgres.create_database("optuna"))
    # credentials in the tracking URL too (a server without authentication ignores them): never shown either
    with_login = tracking.replace("http://", f"http://ada:{postgres.password}@")
    stores = ["--storage", storage, "--tracking", with_login]
    config = write_study(tmp_path)

    # the study: this process runs the baseline, two worker processes share the rest
    assert main(["study", "--config", str(config), "--runs-dir", str(tmp_path / "a"), "--name", "tiny",
                 "--trials", "4", "--no-progress", "--workers", "2", *stores]) == 0
    # another "machine" (its own runtime folder) joins with nothing but the study's name and stores
    assert main(["worker", "--study", "tiny", "--runs-dir", str(tmp_path / "b"), "--trials", "1", *stores]) == 0
    # joined again without --trials: the study already holds the 4 its make study asked for
    assert main(["worker", "--study", "tiny", "--runs-dir", str(tmp_path / "b"), *stores]) == 0
    out, err = capsys.readouterr()
    assert "joined study 'tiny'" in out and "already holds its 4 trial(s): nothing to run" in out
    assert "View run" not in out  # MLflow's per-run URL lines are off

    # the trials that ran (two workers that start trials at the same moment may start one past the target,
    # which ends FAIL without running: study.trials.was_run, tests/study/test_study_workers.py)
    trials = ran(optuna.load_study(study_name="tiny", storage=storage).get_trials())
    assert len(trials) == 5 and len({t.number for t in trials}) == 5  # none lost, none duplicated
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and trials[0].user_attrs["baseline"]
    assert trials[0].number == 0
    last = trials[-1].number  # the joined worker's, which ran after the study's processes ended
    assert list((tmp_path / "b" / "studies" / "tiny").glob(f"*/trial-{last:04d}/summary.json"))  # ran on "b"

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server keeps the artifacts
    found = client.search_runs([exp.experiment_id], max_results=100)
    parents, children = split_runs(found)
    (parent,) = parents
    assert [int(r.data.tags["optuna.trial_number"]) for r in children] == [t.number for t in trials]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {"summary.json", "density_width.png", "model/model.safetensors"} <= set(
        artifact_paths(client, children[-1].info.run_id))
    assert list((server_dir / "mlflow-server-artifacts").rglob("model.safetensors"))  # in the server's folder

    # the password is nowhere: not printed, not in any run's params or tags, not in the study's attrs
    study = optuna.load_study(study_name="tiny", storage=storage)
    recorded = json.dumps([study.user_attrs] + [(t.user_attrs, t.system_attrs) for t in trials]
                          + [(r.data.params, r.data.tags) for r in found], default=str)
    assert postgres.password not in out + err + recorded + server_log.read_text()

    # the report reads both servers; its links point at the tracking server
    assert main(["report", "--runs-dir", str(tmp_path / "a"), *stores, "--no-log"]) == 0
    trials_csv = (tmp_path / "a" / "reports" / "tiny" / "trials.csv").read_text()
    assert f"{tracking}/#/experiments/{exp.experiment_id}/runs/" in trials_csv
    assert postgres.password not in capsys.readouterr().out


def test_environment_carries_the_stores(postgres, mlflow_server, tmp_path, monkeypatch, capsys):
    """$ADPRUNE_STORAGE and $ADPRUNE_TRACKING stand in for the flags (passwords stay off command lines)."""
    tracking, _, _ = mlflow_server
    storage = postgres.url(postgres.create_database("optuna"))
    monkeypatch.setenv("ADPRUNE_STORAGE", storage)
    monkeypatch.setenv(TRACKING_ENV, tracking)
    assert main(["study", "--config", str(write_study(tmp_path)), "--runs-dir", str(tmp_path), "--name", "env",
                 "--trials", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"mlflow {tracking}" in out and "postgresql://adprune:***@127.0.0.1" in out
    assert [t.state.name for t in optuna.load_study(study_name="env", storage=storage).get_trials()] == ["COMPLETE"] * 2
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_mlflow_server_command_keeps_the_database_url_off_the_command_line(tmp_path):
    from study.cli import mlflow_server_command

    url = "postgresql://adprune:pw@db:5432/mlflow"
    cmd, env = mlflow_server_command(url, tmp_path / "art", "127.0.0.1", 5001)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and url not in " ".join(cmd)
    assert env == {"MLFLOW_BACKEND_STORE_URI": url}  # MLflow's own variable for --backend-store-uri
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "art").resolve().as_uri()
    cmd, env = mlflow_server_command(url, tmp_path / "art", "0.0.0.0", 5001, allowed_hosts=["gpu-7", "gpu-7:*"],
                                     cors_origins=["http://gpu-7:5001"], auth_config=tmp_path / "auth.ini")
    assert cmd[cmd.index("--allowed-hosts") + 1] == "gpu-7,gpu-7:*"
    assert cmd[cmd.index("--cors-allowed-origins") + 1] == "http://gpu-7:5001"
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "auth.ini")
