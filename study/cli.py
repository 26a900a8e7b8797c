"""``adprune study``, ``adprune worker``, ``adprune mlflow-server``, ``adprune ui`` and ``adprune snapshots``:
this package's ``COMMANDS`` for the ``adprune`` front door (``adprune/cli.py``).

    adprune study [--dataset synthetic] [--model vgg11] [--trials N] [--epochs E] [--name NAME]
                  [--data PATH] [--seed S] [--runs-dir runs] [--storage URL] [--tracking URI]
                  [--config FILE] [--set KEY=VALUE ...] [--workers K | --gpus 0,1 --workers-per-gpu K]
                  [--no-share] [--snapshot-gb GB] [--snapshot-dir DIR]
    adprune worker --study NAME [--storage URL] [--tracking URI] [--trials N] [--data PATH] [--set KEY=VALUE ...]
                   [--no-share] [--snapshot-dir DIR]
    adprune snapshots [--runs-dir runs] [--snapshot-dir DIR] [--remove]
    adprune mlflow-server [--backend-store URI] [--artifacts DIR] [--host 127.0.0.1] [--port 5001]
                          [--allowed-hosts NAMES] [--cors-origins ORIGINS] [--auth [--auth-db URI]]
    adprune ui [--runs-dir runs] [--port 5000]

``--set`` takes trainer keys (added to the study's ``fixed``) or ``sampler.*``, ``stopper.*``,
``constraints.*`` keys. The runtime folder defaults to ``$RUNS_DIR`` or ``runs``; the stores to the
embedded SQLite files there, or ``$ADPRUNE_STORAGE`` / ``$ADPRUNE_TRACKING`` (``study.stores``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from adprune_core.cli import Command
from adprune_core.errors import ConfigError
from adprune_core.files import check_writable_dir
from study.server_options import (
    ADMIN_PASSWORD_ENV,
    allowed_hosts,
    check_admin_password,
    cors_origins,
    machine_names,
    split_names,
    write_auth_config,
)
from study.store_args import RUNS_DIR_ENV, add_store_args, default_runs_dir, stores_from_args, without_store_flags
from study.stores import RUNS_DIR_FLAG, Stores, check_sqlite_file, location, without_credentials

DATASETS = ("synthetic", "cifar10", "cifar100", "tinyimagenet", "imagefolder")
MLFLOW_SERVER_PORT = 5001
MLFLOW_BACKEND_ENV = "ADPRUNE_MLFLOW_BACKEND"  # make mlflow-server DB=...
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # MLflow's: the basic-auth app's CSRF key


def add_share_args(p: argparse.ArgumentParser, limit: bool = True) -> None:
    """``--no-share`` and ``--snapshot-dir`` (and ``--snapshot-gb``): shared-prefix trials (study/sharing.py)."""
    p.add_argument("--no-share", action="store_true",
                   help="train every trial from scratch: no epoch snapshots written or used (share.enabled=false)")
    if limit:
        p.add_argument("--snapshot-gb", type=float, default=None, metavar="GB",
                       help="size limit of the snapshot folder (share.snapshot_gb, default 10)")
    p.add_argument("--snapshot-dir", default=None, metavar="DIR",
                   help="epoch snapshot folder (default <runs>/snapshots; a shared folder serves several machines)")


def share_values(args: argparse.Namespace) -> dict[str, object]:
    """The study keys ``--no-share`` and ``--snapshot-gb`` set."""
    values: dict[str, object] = {}
    if args.no_share:
        values["share.enabled"] = False
    if getattr(args, "snapshot_gb", None) is not None:
        values["share.snapshot_gb"] = args.snapshot_gb
    return values


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", help=f"preset dataset: {', '.join(DATASETS)} (default synthetic)")
    p.add_argument("--model", help="preset model: vgg19 or resnet18 (default vgg11 on synthetic, else vgg19)")
    p.add_argument("--config", help="study file (default configs/study/<dataset>-<model>.yaml)")
    p.add_argument("--trials", type=int, default=10, help="trials in the study, the baseline included (default 10)")
    p.add_argument("--epochs", type=int, help="training epochs per trial (train.epochs)")
    p.add_argument("--name", help="study name (default <dataset>-<model>, or the study file's name)")
    p.add_argument("--data", help="dataset folder or zip (data.root)")
    p.add_argument("--seed", type=int, help="sampler seed (sampler.seed)")
    add_store_args(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trainer key (train.batch_size=64) or a study key (sampler.name=nsga2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, one line per trial")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the study on this machine (default 1)")
    p.add_argument("--gpus", default=None, help="GPU ids for one worker each (times --workers-per-gpu), e.g. 0,1")
    p.add_argument("--workers-per-gpu", type=int, default=1, help="workers (concurrent trials) per GPU (default 1)")
    add_share_args(p)
    # set by the process that starts the workers: this process is worker <rank> of the study's MLflow run
    p.add_argument("--worker-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-run", default=None, help=argparse.SUPPRESS)


def worker_envs(workers: int | None, gpus: str | None, per_gpu: int, cpu_count: int) -> list[dict[str, str]]:
    """The environment of each worker process: its GPU, or its share of the CPU threads.

    ``--gpus 0,1 --workers-per-gpu 2`` gives four workers, two on each GPU (CUDA_VISIBLE_DEVICES);
    ``--workers 3`` gives three on this machine's default device, each with cpu_count / 3 threads."""
    if per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu: {per_gpu} must be >= 1")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: {workers} must be >= 1")
    if gpus:
        ids = [g.strip() for g in gpus.split(",")]
        if not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise ConfigError(f"--gpus: {gpus!r} must be distinct GPU numbers separated by commas, e.g. 0,1")
        if workers is not None and workers != len(ids) * per_gpu:
            raise ConfigError(f"--workers {workers} does not match --gpus {gpus} x --workers-per-gpu {per_gpu}; "
                              "give --gpus with --workers-per-gpu, or --workers alone")
        return [{"CUDA_VISIBLE_DEVICES": g} for g in ids for _ in range(per_gpu)]
    n = workers or 1
    threads = str(max(1, cpu_count // n))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if n > 1 else {} for _ in range(n)]


def _run_study(args: argparse.Namespace) -> int:
    from study.runner import format_report, run_study
    from study.space import DEFAULT_MODELS, find_study_file, load_study_config

    if args.config:
        path = Path(args.config)
        default_name = path.stem
    else:
        model = args.model or DEFAULT_MODELS.get(args.dataset, "vgg19")
        path = find_study_file(args.dataset, model)
        default_name = f"{args.dataset}-{model}"
    values: dict[str, object] = {}
    if args.epochs is not None:
        values["train.epochs"] = args.epochs
    if args.data:
        values["data.root"] = args.data
    if args.seed is not None:
        values["sampler.seed"] = args.seed
    if args.no_progress:
        values["train.progress"] = False
    values.update(share_values(args))
    cfg = load_study_config(path, args.overrides, values)
    stores = stores_from_args(args)
    stores.check_writable()
    name = args.name or default_name
    if args.worker_rank is None:  # (a worker's parent already said it)
        print(f"study {name!r} from {path}: {stores.describe()}")
    else:
        from study.workers import run_worker

        run_worker(cfg, name, stores, args.parent_run, rank=args.worker_rank, snapshots=args.snapshot_dir)
        return 0
    envs = worker_envs(args.workers, args.gpus, args.workers_per_gpu, os.cpu_count() or 1)

    def spawn(rank: int, parent_run_id: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "adprune", *without_store_flags(args.argv), "--no-progress",
               "--worker-rank", str(rank), "--parent-run", parent_run_id]
        # its own session: a Ctrl-C at the terminal reaches this process only, which passes it on once
        return subprocess.Popen(cmd, env={**os.environ, **envs[rank], **stores.child_env()}, start_new_session=True)

    report = run_study(cfg, name, args.trials, stores, progress=not args.no_progress, workers=len(envs),
                       spawn=spawn, snapshots=args.snapshot_dir)
    print(format_report(report, cfg.objective_names))
    if stores.tracking_server:
        from study.tracking import ui_url

        print(f"browse: {ui_url(without_credentials(stores.tracking_uri))}")
    else:
        runs_dir = args.runs_dir or default_runs_dir()
        print(f"browse: make ui{'' if runs_dir == 'runs' else f' RUNS_DIR={runs_dir}'}  "
              f"(adprune ui --runs-dir {runs_dir})")
    stuck = report.ran == 0 and not any(t["state"] == "COMPLETE" for t in report.trials)
    return 1 if stuck else 0  # nothing to run, and nothing completed: not a success


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="name of the running study to join")
    add_store_args(p)
    p.add_argument("--trials", type=int, default=None,
                   help="trials to run here (default: until the study holds the number its make study asked for)")
    p.add_argument("--data", help="this machine's dataset folder or zip (data.root), if not where the study's is")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trainer key on this machine, e.g. train.device=cuda:1")
    add_share_args(p, limit=False)


def _run_worker(args: argparse.Namespace) -> int:
    """Join a study from any machine that reaches its stores; its config comes from the study itself."""
    from study.workers import join_study

    values = {"data.root": args.data} if args.data else {}
    stores = stores_from_args(args)
    stores.check_writable()
    join_study(args.study, stores, args.trials, args.overrides, {**values, **share_values(args)},
               snapshots=args.snapshot_dir)
    return 0


def _snapshots_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help=f"runtime folder (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--snapshot-dir", default=None, metavar="DIR", help="snapshot folder (default <runs>/snapshots)")
    p.add_argument("--remove", action="store_true",
                   help="delete every snapshot (studies then train their prefixes again; nothing else is touched)")


def _run_snapshots(args: argparse.Namespace) -> int:
    """List the epoch snapshots of shared prefixes, or remove them all (``--remove``)."""
    from adprune_core.snapshots import SnapshotStore
    from study.sharing import snapshot_dir

    store = SnapshotStore(snapshot_dir(args.runs_dir or default_runs_dir(), args.snapshot_dir))
    if args.remove:
        removed, freed = store.remove_all()
        print(f"removed {removed} snapshot(s) from {store.root}, {freed / 1e6:.1f} MB freed")
        return 0
    entries = store.entries()
    print(f"{store.root}: {len(entries)} snapshot(s), {store.size_bytes() / 1e6:.1f} MB"
          + ("  (make snapshots-clean or adprune snapshots --remove deletes them)" if entries else ""))
    for e in entries:
        print(f"  {e.key[:12]}  epoch {e.epoch:>3}  {e.bytes / 1e6:8.2f} MB  "
              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.written_at))}  {e.written_by}")
    return 0


def mlflow_server_command(backend_store: str, artifacts: str | Path, host: str, port: int,
                          workers: int = 2, allowed_hosts: list[str] | None = None,
                          cors_origins: list[str] | None = None,
                          auth_config: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and the environment it adds: runs and the model registry in
    ``backend_store`` (passed in the environment, so that its password is not on a command line),
    artifacts served by the server from the folder ``artifacts`` (clients need no access to it); the Host
    names and browser origins it accepts, and MLflow's basic-auth app with ``auth_config``
    (``study.server_options``)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts",
           "--artifacts-destination", Path(artifacts).resolve().as_uri(),
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts)]
    if cors_origins:
        cmd += ["--cors-allowed-origins", ",".join(cors_origins)]
    env = {"MLFLOW_BACKEND_STORE_URI": backend_store}
    if auth_config is not None:
        cmd += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
        # the UI's CSRF tokens are signed with it; one server's processes share it (several servers: set it)
        env[SECRET_KEY_ENV] = os.environ.get(SECRET_KEY_ENV) or secrets.token_hex(32)
    return cmd, env


def _mlflow_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help=f"runtime folder (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--backend-store", default=None, metavar="URI",
                   help=f"database for runs and models, e.g. postgresql://USER@HOST:5432/mlflow (default "
                        f"${MLFLOW_BACKEND_ENV}, else sqlite <runs>/mlflow-server.db)")
    p.add_argument("--artifacts", default=None, help="artifact folder (default <runs>/mlflow-server-artifacts)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0 lets other machines in)")
    p.add_argument("--port", type=int, default=MLFLOW_SERVER_PORT, help=f"port (default {MLFLOW_SERVER_PORT})")
    p.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="more host names clients may use in the server's URL, comma-separated (this machine's "
                        "names, localhost and private addresses are always allowed)")
    p.add_argument("--cors-origins", default=None, metavar="ORIGINS",
                   help="more browser origins for the UI, e.g. https://mlflow.example.org (comma-separated)")
    p.add_argument("--auth", action="store_true",
                   help=f"require a login (MLflow's basic-auth app); the admin's password in ${ADMIN_PASSWORD_ENV}")
    p.add_argument("--auth-db", default=None, metavar="URI",
                   help="database of users and permissions under --auth (default sqlite <runs>/mlflow-auth.db)")


def _run_mlflow_server(args: argparse.Namespace) -> int:
    from study.stores import DATABASES, check_url, sqlite_url

    check_port(args.port, "--port (MLFLOW_PORT=)")
    runs_dir = check_writable_dir(args.runs_dir or default_runs_dir(), RUNS_DIR_FLAG)
    artifacts = check_writable_dir(args.artifacts or runs_dir / "mlflow-server-artifacts", "--artifacts (ARTIFACTS=)")
    given = args.backend_store or os.environ.get(MLFLOW_BACKEND_ENV)
    backend_store = (check_url(given, "the MLflow server's database", DATABASES, "--backend-store",
                               "postgresql://USER@HOST:5432/mlflow or sqlite:///path/mlflow-server.db")
                     if given else sqlite_url(runs_dir / "mlflow-server.db"))
    auth_db = None
    if args.auth:
        check_admin_password(os.environ)
        auth_db = (check_url(args.auth_db, "the users' database", DATABASES, "--auth-db",
                             "sqlite:///path/mlflow-auth.db or postgresql://USER@HOST:5432/mlflow_auth")
                   if args.auth_db else sqlite_url(runs_dir / "mlflow-auth.db"))
    if not _has_mlflow():
        raise ConfigError("mlflow is not installed; run make install")
    names = machine_names()
    extra = split_names(args.allowed_hosts)
    hosts = allowed_hosts(args.host, names, extra)
    origins = cors_origins(args.port, [*names, *(n for n in extra if n != "*")], split_names(args.cors_origins))
    runs_dir.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    auth_config = write_auth_config(runs_dir, auth_db) if auth_db else None
    shown_host = "HOST" if args.host in ("0.0.0.0", "::") else args.host
    print(f"MLflow tracking server on http://{args.host}:{args.port}: runs in {location(backend_store)}, "
          f"artifacts in {artifacts}  (Ctrl-C stops it)\n"
          f"  studies and workers use it with --tracking http://{shown_host}:{args.port} "
          f"(make study TRACKING=..., make worker TRACKING=...)\n"
          f"  host names it answers to: {', '.join(dict.fromkeys(['localhost', *names, *extra]))} and private "
          "addresses (more: make mlflow-server ALLOWED_HOSTS=name,...)", flush=True)
    if auth_config is not None:
        print(f"  logins required (MLflow basic auth; users in {location(auth_db)}): clients set "
              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD", flush=True)
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {args.host}: anyone who reaches this port can read and write runs; "
              "make mlflow-server AUTH=1 requires a login", file=sys.stderr)
    cmd, env = mlflow_server_command(backend_store, artifacts, args.host, args.port, args.workers, hosts,
                                     origins, auth_config)
    return run_server(cmd, {**os.environ, **env}, "MLflow tracking server")


def ui_command(runs_dir: str | Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow ui`` command line for the study stores under ``runs_dir``."""
    stores = Stores.resolve(runs_dir, env={})  # the embedded store of that folder
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", stores.tracking_uri,
            "--default-artifact-root", stores.artifact_root.as_uri(), "--host", host, "--port", str(port),
            "--workers", "1"]


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help=f"runtime folder (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")


def _run_ui(args: argparse.Namespace) -> int:
    check_port(args.port, "--port (PORT=)")
    runs_dir = Path(args.runs_dir or default_runs_dir())
    if not (runs_dir / "mlflow.db").is_file():
        raise ConfigError(f"no MLflow store at {runs_dir / 'mlflow.db'}; run a study first (make study) "
                          "or pass --runs-dir")
    check_sqlite_file(runs_dir / "mlflow.db", "the MLflow store")
    if not _has_mlflow():
        raise ConfigError("mlflow is not installed; run make install")
    from study.tracking import ui_url

    print(f"MLflow UI for {runs_dir / 'mlflow.db'}: {ui_url(f'http://127.0.0.1:{args.port}')}  (Ctrl-C stops it)",
          flush=True)
    return run_server(ui_command(runs_dir, args.port), dict(os.environ), "MLflow UI")


def run_server(cmd: list[str], env: dict[str, str], what: str, grace_s: float = 10.0) -> int:
    """Run a server command in the foreground until it exits or this process gets Ctrl-C / SIGINT / SIGTERM;
    then stop it and everything it started, quietly: returns 0 after a stop, else the server's exit code.

    The server runs in its own session, so a Ctrl-C at the terminal reaches this process only (MLflow's
    server and its uvicorn workers would each print a traceback for it); this process then sends SIGTERM
    to the server's whole process group (uvicorn's workers included, which a signal to the server process
    alone leaves running), waits up to ``grace_s`` seconds, and SIGKILLs what is left."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    # both signals stop it, also when this process was started with SIGINT ignored (a background job)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print(f"stopping the {what} ...", file=sys.stderr, flush=True)
        _stop_group(proc, grace_s)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            _stop_group(proc, grace_s)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            # the group may outlive its leader (workers that ignore SIGTERM): SIGKILL the rest
            if sig == signal.SIGTERM:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def check_port(port: int, flag: str) -> None:
    """A one-line ``ConfigError`` unless ``port`` is a TCP port number (1..65535)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag}: {port} is not a TCP port; use a number from 1 to 65535, e.g. 5000")


def _has_mlflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


COMMANDS: dict[str, Command] = {
    "study": ("search the pruning design space with Optuna, tracked in MLflow", _study_args, _run_study),
    "worker": ("join a running study from this machine (its config comes from the study)", _worker_args,
               _run_worker),
    "mlflow-server": ("start an MLflow tracking server for studies on several machines", _mlflow_server_args,
                      _run_mlflow_server),
    "ui": ("start the MLflow UI for the study stores", _ui_args, _run_ui),
    "snapshots": ("list (or --remove) the epoch snapshots that trials of a study share", _snapshots_args,
                  _run_snapshots),
}
