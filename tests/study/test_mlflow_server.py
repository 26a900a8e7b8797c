"""``adprune mlflow-server`` (make mlflow-server): the Host names and browser origins it accepts, MLflow's
basic-auth app with a changed admin password, and the one-line errors a client gets from a server that
refuses it. A real ``mlflow server`` on loopback (SQLite store) where a server is needed."""

import http.server
import os
import secrets
import signal
import subprocess
import sys
import threading

import pytest
import requests

from adprune.cli import main
from adprune_core.errors import ConfigError
from study.server_options import LEGACY_DEFAULT_PASSWORD, allowed_hosts, check_admin_password, cors_origins
from study.stores import Stores, check_tracking_reachable
from tests.helpers import ROOT, wait_healthy, write_study
from tests.postgres import free_port

API = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_allowed_hosts_keep_mlflows_defaults_and_add_the_machines_names():
    hosts = allowed_hosts("0.0.0.0", ["gpu-7", "gpu-7.lab.example"], ["mlflow-host"])
    for name in ("localhost", "127.0.0.1", "gpu-7", "gpu-7.lab.example", "mlflow-host"):
        assert name in hosts and f"{name}:*" in hosts  # a Host header carries the port
    assert "[::1]" in hosts and "[[]::1]:*" in hosts and "10.*" in hosts and "172.31.*" in hosts
    assert "0.0.0.0:*" in hosts and hosts.count("localhost") == 1
    assert "10.0.0.5" in allowed_hosts("10.0.0.5", []) and allowed_hosts("::", [], ["*"]) == ["*"]
    assert cors_origins(5001, ["gpu-7", "::1"], ["https://mlflow.example.org"]) == [
        "http://gpu-7:5001", "http://[::1]:5001", "https://mlflow.example.org"]


@pytest.mark.parametrize(("password", "needle"), [
    (None, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ("", "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    (LEGACY_DEFAULT_PASSWORD, "MLflow's old default admin password, which is public; change it"),
    ("short-pw", "has 8 characters; MLflow needs at least 12"),
])
def test_auth_needs_a_changed_admin_password(password, needle, tmp_path, monkeypatch, capsys):
    env = {} if password is None else {"MLFLOW_AUTH_ADMIN_PASSWORD": password}
    with pytest.raises(ConfigError, match=needle):
        check_admin_password(env)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    if password is not None:
        monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", password)
    assert main(["mlflow-server", "--runs-dir", str(tmp_path / "runs"), "--auth", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adprune: error: --auth: ") and len(err.splitlines()) == 1 and needle in err
    assert not password or password not in err  # the value is never shown
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def start_server(tmp_path, *args, env=None):
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "adprune", "mlflow-server", "--runs-dir", str(tmp_path),
                             "--port", str(port), "--workers", "1", *args], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    return proc, port, log


def stop_server(proc):
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_basic_auth_server_refuses_anonymous_and_default_logins(tmp_path, monkeypatch):
    """``make mlflow-server AUTH=1``: every request needs a login; the admin logs in with the password given
    in $MLFLOW_AUTH_ADMIN_PASSWORD, never with MLflow's old public default."""
    password = secrets.token_urlsafe(16)
    proc, port, log = start_server(tmp_path, "--auth", env={"MLFLOW_AUTH_ADMIN_PASSWORD": password})
    try:
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + API, timeout=60).status_code == 401
        assert requests.get(url + API, auth=("admin", LEGACY_DEFAULT_PASSWORD), timeout=60).status_code == 401
        assert requests.get(url + API, auth=("admin", password), timeout=60).status_code == 200
        assert "logins required" in log.read_text() and password not in log.read_text()
        assert password not in (tmp_path / "mlflow-auth.ini").read_text()  # the config holds no password
        # a client without a login: one line that says what to set
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        stores = Stores.resolve(tmp_path / "client", tracking=url, env={})
        with pytest.raises(ConfigError, match="requires a login .HTTP 401.; set MLFLOW_TRACKING_USERNAME"):
            check_tracking_reachable(stores, timeout_s=60)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        check_tracking_reachable(stores, timeout_s=60)
    finally:
        stop_server(proc)


class _RefusesHosts(http.server.BaseHTTPRequestHandler):
    """What MLflow >= 3.5 answers a request for a host it does not allow: /health is exempt."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.path == "/health"
        body = b"OK" if ok else b"Invalid Host header - possible DNS rebinding attack detected"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_that_refuses_the_host_name_is_a_one_line_error_before_anything_is_written(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusesHosts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        runs = tmp_path / "runs"
        assert main(["study", "--config", str(write_study(tmp_path)), "--runs-dir", str(runs), "--name", "tiny",
                     "--trials", "1", "--no-progress", "--tracking", f"http://127.0.0.1:{port}"]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refuses requests for host '127.0.0.1:" in err
    assert "ALLOWED_HOSTS=127.0.0.1" in err
    assert not runs.exists()  # no store, no study
