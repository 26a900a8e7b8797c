"""A real PostgreSQL server for the tests, started on loopback in a temporary folder.

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it when it can). The
server listens on 127.0.0.1 only, on a free port, with password (SCRAM) authentication for TCP, and
is stopped and deleted when the test session ends. PostgreSQL refuses to run as root: as root the
server runs as the ``postgres`` system user that the package creates. Without the binaries (or that
user) the tests that need the server skip, saying why.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "adprune"
INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql; .ci/run does it)"


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    password: str
    run_as: list[str]  # command prefix: [] or ["runuser", "-u", "postgres", "--"]

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "db") -> str:
        """A new, empty database; returns its name (a random suffix keeps names unique: an existing name
        fails loudly)."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres",
                             connect_timeout=10, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer | str:
    """A running server, or the reason there is none (for ``pytest.skip``)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl); {INSTALL_HINT}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no psycopg (the PostgreSQL driver); run make install"
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="adprune-pg-"))
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            return f"running as root and there is no 'postgres' user to run the server as; {INSTALL_HINT}"
        if not shutil.which("runuser"):
            return "running as root without runuser to start the server as 'postgres'"
        os.chown(root, pg.pw_uid, pg.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        shutil.chown(pwfile, "postgres")
    port = free_port()
    steps = [
        [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", USER, "--pwfile", str(pwfile), "-A", "scram-sha-256",
         "--auth-local", "trust", "-E", "UTF8", "--no-sync"],
        [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start"],
    ]
    for cmd in steps:
        done = subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
            shutil.rmtree(root, ignore_errors=True)
            return f"could not start PostgreSQL ({Path(cmd[0]).name}: {(done.stderr or log).strip()[-300:]})"
    server = PostgresServer(bin_dir, root, port, password, run_as)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.create_database("probe")
            return server
        except Exception as exc:  # starting up
            if time.monotonic() > deadline:
                server.stop()
                return f"PostgreSQL started but does not accept connections: {exc}"
            time.sleep(0.5)
