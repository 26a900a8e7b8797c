"""``adprune ui`` as a user runs it: a real MLflow UI process, stopped by one SIGINT (what Ctrl-C sends),
with nothing left running and no traceback."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, tracking_uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_processes(port: int) -> list[int]:
    """Pids whose command line names ``--port <port>`` (the UI's server and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and str(port).encode() in args:
            pids.append(int(entry.name))
    return pids


def test_ui_stops_on_one_sigint_with_nothing_left_running(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    MlflowClient(tracking_uri=tracking_uri(runs)).create_experiment("tiny")  # the store a study leaves
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "adprune", "ui", "--runs-dir", str(runs),
                                 "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the UI did not come up:\n{log.read_text()}"
            time.sleep(0.5)
        assert serving_processes(port), "the UI's server process should be running"
        os.kill(proc.pid, signal.SIGINT)  # to this process alone, as the issue reproduced it
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "stopping the MLflow UI" in text
    deadline = time.monotonic() + 15
    while serving_processes(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert serving_processes(port) == [], "the UI's server or workers outlived the command"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port still accepts connections"
