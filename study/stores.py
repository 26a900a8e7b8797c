"""Where a study keeps its records: the Optuna storage and the MLflow tracking store.

- Default, embedded (no server): SQLite files in the runtime folder, ``<runs>/optuna.db`` and
  ``<runs>/mlflow.db``, artifacts under ``<runs>/mlartifacts/``.
- Several machines: an Optuna RDB URL (``--storage`` or ``$ADPRUNE_STORAGE``, e.g.
  ``postgresql://adprune@db-host:5432/optuna``) and an MLflow tracking server (``--tracking`` or
  ``$ADPRUNE_TRACKING``, e.g. ``http://mlflow-host:5001``, started with ``make mlflow-server``), which
  stores artifacts for its clients. A database URL as the tracking URI also works, with artifacts in
  the local ``<runs>/mlartifacts/`` (one machine only).
- The runtime folder always holds each machine's own trial outputs and epoch checkpoints.

Credentials: a password in a URL is never printed or logged; ``redact`` replaces it with ``***``
wherever a URL is shown, and worker processes get the URLs through the environment, not their
command line. Better still, keep passwords out of URLs: PostgreSQL reads ``$PGPASSWORD`` and
``~/.pgpass``, an MLflow server's clients ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``.

SQLite shared by several processes: every transaction starts with ``BEGIN IMMEDIATE`` (it takes the
write lock at once and waits up to ``SQLITE_LOCK_TIMEOUT_S`` for it). Python's sqlite3 otherwise
reads outside the transaction, so two workers could both see the same WAITING trial (the baseline, a
retry) and both run it; PostgreSQL's ``SELECT ... FOR UPDATE`` needs no such help.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from adprune_core.errors import ConfigError
from adprune_core.files import check_writable_dir, check_writable_file

STORAGE_ENV = "ADPRUNE_STORAGE"
TRACKING_ENV = "ADPRUNE_TRACKING"
STORAGE_FLAG = f"--storage (${STORAGE_ENV})"  # how errors name the setting: a flag, or make's STORAGE=
TRACKING_FLAG = f"--tracking (${TRACKING_ENV})"
RUNS_DIR_FLAG = "--runs-dir (RUNS_DIR=)"
SQLITE_LOCK_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
DATABASES = ("sqlite", "postgresql", "mysql")  # SQLAlchemy back ends that Optuna and MLflow both support
SERVERS = ("http", "https")  # an MLflow tracking server
EXAMPLE_STORAGE = "postgresql://USER@HOST:5432/DB or sqlite:///path/optuna.db"
EXAMPLE_TRACKING = "http://HOST:5001 (make mlflow-server), postgresql://USER@HOST:5432/DB or sqlite:///path/mlflow.db"
_SECRET_PARAMS = ("password", "passwd", "pass", "token", "secret", "key")
# Study names become folder names, an MLflow experiment, run and registered-model name: a safe alphabet, and a
# length well within every store's limit (MLflow: 250 characters for a run name; file names: 255 bytes)
STUDY_NAME_MAX = 100
STUDY_NAME_RULE = (f"1 to {STUDY_NAME_MAX} characters: letters, digits, '.', '_' and '-', starting with a letter or "
                   "a digit")
_STUDY_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{STUDY_NAME_MAX - 1}}}")
LOCK_FILE = ".adprune.lock"


def check_study_name(name: str, flag: str = "--name") -> str:
    """``name`` if it is a valid study name (``STUDY_NAME_RULE``); else a one-line ``ConfigError``. Checked
    before anything is written: a name such as ``../../x`` would put trial folders outside the runs folder."""
    if not _STUDY_NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ConfigError(f"{flag}: {shown} is not a valid study name; a study name is {STUDY_NAME_RULE}, "
                          "e.g. cifar10-vgg19")
    return name


@contextmanager
def stores_lock(runs_dir: str | Path) -> Iterator[None]:
    """Hold the runtime folder's lock (``<runs>/.adprune.lock``, created with the folder): the processes of
    this machine that create or prepare a study's stores take turns. Two ``make study`` sessions started
    together on a fresh folder would otherwise both create the same SQLite stores (MLflow's migrations fail
    in the second) and both create the study's MLflow parent run and baseline."""
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def empty_store_files(stores: Stores) -> list[Path]:
    """The embedded store files of ``stores`` that exist but are empty (0 bytes): a store that was lost
    (a failed copy, a full disk); opening one makes a new, empty store in it."""
    paths = [sqlite_path(url) for url in (stores.optuna_url, stores.tracking_uri)]
    return [p for p in paths if p is not None and p.is_file() and p.stat().st_size == 0]


def redact(url: str) -> str:
    """``url`` with any password (in ``user:password@`` or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/:")
    if netloc == parts.netloc and query == parts.query:
        return url
    # joined by hand: urlunsplit would drop the empty host of sqlite:////abs/path
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part, e.g. for links in a report."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)


def scrub(text: str, *urls: str) -> str:
    """``text`` (an error message, a log line) with the passwords of ``urls`` replaced by ``***``."""
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            text = text.replace(password, "***")
    return text


def backend(url: str) -> str:
    """The URL's back end: ``postgresql`` for ``postgresql+psycopg2://...``, ``http`` ..."""
    return url.partition("://")[0].partition("+")[0].lower()


def check_url(url: str, what: str, allowed: tuple[str, ...], flag: str, example: str) -> str:
    """Validate a store URL's form (not reachability); returns it. ``ConfigError`` names the value,
    the rule and the fix, with any password redacted."""
    shown = redact(url)
    if "://" not in url:
        raise ConfigError(f"{flag}: {shown!r} is not a URL; {what} takes one of {', '.join(allowed)}, "
                          f"e.g. {example}")
    kind = backend(url)
    if kind not in allowed:
        raise ConfigError(f"{flag}: {shown!r} uses {kind!r}; {what} takes one of {', '.join(allowed)}, "
                          f"e.g. {example}")
    if kind == "sqlite":
        path = str(sqlite_path(url))
        if not url.lower().startswith(("sqlite:///", "sqlite+pysqlite:///")) or path in ("", ".", ":memory:"):
            raise ConfigError(f"{flag}: {shown!r} is not a SQLite file; several processes share the store, "
                              "so give a file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
    elif kind in SERVERS:
        if not urlsplit(url).hostname:
            raise ConfigError(f"{flag}: {shown!r} names no host; e.g. http://127.0.0.1:5001")
    else:
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"{flag}: {shown!r} names no database host; e.g. {example}")
        if not parts.path.strip("/"):
            raise ConfigError(f"{flag}: {shown!r} names no database; add it after the host, e.g. {example}")
    return url


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _with_lock_timeout(url: str) -> str:
    """A SQLite tracking URI waits for other processes' locks as long as the Optuna storage does (MLflow
    opens its own engine, so the wait travels in the URL); other URLs are returned as they are."""
    if backend(url) != "sqlite" or "timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}timeout={SQLITE_LOCK_TIMEOUT_S}"


@dataclass(frozen=True)
class Stores:
    """The study's two stores and the local runtime folder; ``resolve`` builds it once per command."""

    runs_dir: Path
    optuna_url: str
    tracking_uri: str

    @classmethod
    def resolve(cls, runs_dir: str | Path, storage: str | None = None, tracking: str | None = None,
                env: Mapping[str, str] | None = None) -> Stores:
        """Flags first, then ``$ADPRUNE_STORAGE`` / ``$ADPRUNE_TRACKING``, then the embedded files."""
        env = os.environ if env is None else env
        runs = Path(runs_dir)
        storage = storage or env.get(STORAGE_ENV) or None
        tracking = tracking or env.get(TRACKING_ENV) or None
        optuna_url = (check_url(storage, "the Optuna storage", DATABASES, STORAGE_FLAG, EXAMPLE_STORAGE)
                      if storage else sqlite_url(runs / "optuna.db"))
        tracking_uri = (_with_lock_timeout(check_url(tracking, "the MLflow tracking store", DATABASES + SERVERS,
                                                     TRACKING_FLAG, EXAMPLE_TRACKING))
                        if tracking else _with_lock_timeout(sqlite_url(runs / "mlflow.db")))
        return cls(runs.resolve(), optuna_url, tracking_uri)

    @classmethod
    def of(cls, where: Stores | str | Path) -> Stores:
        """``where`` as Stores: a runtime folder means its embedded stores (or the environment's)."""
        return where if isinstance(where, Stores) else cls.resolve(where)

    @property
    def tracking_server(self) -> bool:
        """Whether MLflow is a tracking server (which then keeps the artifacts)."""
        return backend(self.tracking_uri) in SERVERS

    @property
    def artifact_root(self) -> Path | None:
        """Where this machine writes artifacts, or None when a tracking server keeps them."""
        return None if self.tracking_server else self.runs_dir / "mlartifacts"

    def describe(self) -> str:
        """Both stores, passwords redacted: safe to print."""
        return f"optuna {location(self.optuna_url)}, mlflow {location(self.tracking_uri)}"

    def child_env(self) -> dict[str, str]:
        """The environment that hands both stores to a worker process (not its command line)."""
        return {STORAGE_ENV: self.optuna_url, TRACKING_ENV: self.tracking_uri}

    def check_writable(self) -> None:
        """A one-line ``ConfigError``, before any work, unless this process may write what the study
        commands write on this machine: the runtime folder (trial outputs, checkpoints, reports, picks) and
        the embedded SQLite stores with their journals and the local artifacts (a server's are its own)."""
        check_writable_dir(self.runs_dir, RUNS_DIR_FLAG)
        for url, flag in ((self.optuna_url, STORAGE_FLAG), (self.tracking_uri, TRACKING_FLAG)):
            path = sqlite_path(url)
            if path is not None:
                check_writable_file(path, RUNS_DIR_FLAG if path.parent == self.runs_dir else flag)
        if self.artifact_root is not None:
            check_writable_dir(self.artifact_root, RUNS_DIR_FLAG)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for other back ends."""
    return Path(url.partition(":///")[2].partition("?")[0]) if backend(url) == "sqlite" else None


_SOUND: set[Path] = set()  # SQLite files this process found sound (checked once per process)


def check_sqlite_file(path: Path, what: str) -> None:
    """A one-line ``ConfigError`` when the SQLite file ``path`` exists but is damaged (cut short, pages
    overwritten), found with SQLite's ``PRAGMA quick_check`` on a read-only connection before anything
    is written to it. A missing or empty file, or one that cannot be opened or stays locked, gets no
    verdict here (the store's own opening reports that)."""
    path = Path(path)
    if path in _SOUND or not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                     timeout=SQLITE_LOCK_TIMEOUT_S)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
        problem = None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:2])
    except sqlite3.OperationalError:  # unreadable or locked: not a verdict on the file's contents
        return
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        problem = str(exc)
    if problem:
        raise ConfigError(f"{what} {path} is damaged (SQLite: {' '.join(problem.split())[:200]}); nothing was "
                          "written to it: restore it from a backup (or salvage it with sqlite3's .recover), or "
                          "move it away to start a new one")
    _SOUND.add(path)


def location(url: str) -> str:
    """Where a store is, safe to print: a SQLite URL's file, any other URL redacted."""
    path = sqlite_path(url)
    return str(path) if path is not None else redact(url)


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine settings for a store shared by several processes: how long to wait for a lock
    (SQLite) or a connection (servers), and a liveness check of pooled connections (servers)."""
    if backend(url) == "sqlite":
        return {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    if backend(url) == "postgresql":
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {"pool_pre_ping": True}


def serialize_sqlite_transactions(engine: Any) -> None:
    """Make every transaction on a SQLite ``engine`` start with ``BEGIN IMMEDIATE`` (module docstring)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 must not issue its own (deferred) BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners would keep the old behaviour


def connection_error(exc: BaseException, url: str, what: str, flag: str) -> ConfigError:
    """A one-line ``ConfigError`` for a store that cannot be opened: the URL (redacted), the first line
    of the driver's message (scrubbed of the password) and the fix."""
    cause = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    if isinstance(exc, ModuleNotFoundError):
        first = f"{exc}; install the database driver (psycopg[binary] for PostgreSQL: make install)"
    return ConfigError(f"{flag}: cannot open {what} at {redact(url)}: {scrub(first, url)}; check that the "
                       f"server runs and the URL (host, port, database, user) is right")


def _check_api_access(uri: str, timeout_s: float) -> None:
    """An MLflow server answers /health to anyone; its API may refuse this client: a Host name it does not
    allow (MLflow >= 3.5: HTTP 403) or a missing login (basic auth: HTTP 401). One line that says which."""
    import requests

    auth = None
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password and urlsplit(uri).password is None:
        auth = (user, password)
    try:
        response = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                                timeout=timeout_s, auth=auth)
    except requests.RequestException:
        return  # /health answered: let MLflow's client report what follows
    host = urlsplit(uri).netloc.rpartition("@")[2]
    if response.status_code == 403 and "host" in response.text.lower():
        raise ConfigError(f"{TRACKING_FLAG}: the MLflow server at {redact(uri)} refuses requests for host {host!r} "
                          f"(HTTP 403: {response.text.strip()[:100]}); start it with make mlflow-server "
                          f"ALLOWED_HOSTS={urlsplit(uri).hostname} (adprune mlflow-server --allowed-hosts ...), or "
                          "use a name it allows")
    if response.status_code == 401:
        raise ConfigError(f"{TRACKING_FLAG}: the MLflow server at {redact(uri)} requires a login (HTTP 401)"
                          + (": the user and password given were refused" if auth or urlsplit(uri).password else "")
                          + "; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if response.status_code == 403:
        raise ConfigError(f"{TRACKING_FLAG}: the MLflow server at {redact(uri)} refuses this user (HTTP 403); "
                          "ask its admin for permission, or log in as another user (MLFLOW_TRACKING_USERNAME)")


def check_tracking_reachable(stores: Stores, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line, when the MLflow tracking store cannot be reached (MLflow's own client
    retries an unreachable server for minutes)."""
    uri = stores.tracking_uri
    if stores.tracking_server:
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as exc:
            reason = type(exc).__name__ + (": connection refused" if "refused" in str(exc).lower() else "")
            raise ConfigError(f"{TRACKING_FLAG}: cannot reach the MLflow tracking server at {redact(uri)} ({reason}); "
                              "start it (make mlflow-server) or fix the URL") from None
        if response.status_code != 200:
            raise ConfigError(f"{TRACKING_FLAG}: {redact(uri)} answered /health with HTTP {response.status_code}, "
                              "not an MLflow tracking server; check the URL") from None
        _check_api_access(uri, timeout_s)
    elif backend(uri) == "sqlite":
        check_sqlite_file(sqlite_path(uri), "the MLflow store")
    else:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(uri, **engine_kwargs(uri))
            with engine.connect():
                pass
            engine.dispose()
        except Exception as exc:
            raise connection_error(exc, uri, "the MLflow tracking store", TRACKING_FLAG) from None
