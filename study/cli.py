"""``adprune study`` and ``adprune ui``, registered into ``adprune_core.cli.SUBCOMMANDS``.

    adprune study [--dataset synthetic] [--model vgg11] [--trials N] [--epochs E] [--name NAME]
                  [--data PATH] [--seed S] [--runs-dir runs] [--config FILE] [--set KEY=VALUE ...]
    adprune ui [--runs-dir runs] [--port 5000]

``--set`` takes trainer keys (added to the study's ``fixed``) or ``sampler.*``, ``stopper.*``,
``constraints.*`` keys. The runtime folder defaults to ``$RUNS_DIR`` or ``runs``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from adprune_core.cli import SUBCOMMANDS
from adprune_core.errors import ConfigError

RUNS_DIR_ENV = "RUNS_DIR"
DATASETS = ("synthetic", "cifar10", "cifar100", "tinyimagenet", "imagefolder")


def default_runs_dir() -> str:
    return os.environ.get(RUNS_DIR_ENV) or "runs"


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", help=f"preset dataset: {', '.join(DATASETS)} (default synthetic)")
    p.add_argument("--model", help="preset model: vgg19 or resnet18 (default vgg11 on synthetic, else vgg19)")
    p.add_argument("--config", help="study file (default configs/study/<dataset>-<model>.yaml)")
    p.add_argument("--trials", type=int, default=10, help="trials in the study, the baseline included (default 10)")
    p.add_argument("--epochs", type=int, help="training epochs per trial (train.epochs)")
    p.add_argument("--name", help="study name (default <dataset>-<model>, or the study file's name)")
    p.add_argument("--data", help="dataset folder or zip (data.root)")
    p.add_argument("--seed", type=int, help="sampler seed (sampler.seed)")
    p.add_argument("--runs-dir", default=None, help=f"runtime folder for both stores (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trainer key (train.batch_size=64) or a study key (sampler.name=nsga2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, one line per trial")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the study on this machine (default 1)")
    p.add_argument("--gpus", default=None, help="GPU ids for one worker each (times --workers-per-gpu), e.g. 0,1")
    p.add_argument("--workers-per-gpu", type=int, default=1, help="workers (concurrent trials) per GPU (default 1)")
    for hidden in ("--worker-rank", "--worker-quota"):  # set by the process that starts the workers
        p.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
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
    cfg = load_study_config(path, args.overrides, values)
    runs_dir = Path(args.runs_dir or default_runs_dir())
    name = args.name or default_name
    print(f"study {name!r} from {path}: optuna {runs_dir / 'optuna.db'}, mlflow {runs_dir / 'mlflow.db'}")
    if args.worker_rank is not None:
        from study.runner import run_worker

        run_worker(cfg, name, args.worker_quota, runs_dir, args.worker_rank, args.parent_run)
        return 0
    envs = worker_envs(args.workers, args.gpus, args.workers_per_gpu, os.cpu_count() or 1)

    def spawn(rank: int, quota: int, parent_run_id: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "adprune_core.cli", *args.argv, "--no-progress", "--worker-rank", str(rank),
               "--worker-quota", str(quota), "--parent-run", parent_run_id]
        # its own session: a Ctrl-C at the terminal reaches this process only, which passes it on once
        return subprocess.Popen(cmd, env={**os.environ, **envs[rank]}, start_new_session=True)

    report = run_study(cfg, name, args.trials, runs_dir, progress=not args.no_progress, workers=len(envs),
                       spawn=spawn)
    print(format_report(report, cfg.objective_names))
    print(f"browse: make ui{'' if runs_dir == Path('runs') else f' RUNS_DIR={runs_dir}'}  "
          f"(adprune ui --runs-dir {runs_dir})")
    return 0


def ui_command(runs_dir: str | Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow ui`` command line for the study stores under ``runs_dir``."""
    from study.tracking import artifact_root, tracking_uri

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(runs_dir),
            "--default-artifact-root", artifact_root(runs_dir).as_uri(), "--host", host, "--port", str(port),
            "--workers", "1"]


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help=f"runtime folder (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")


def _run_ui(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir or default_runs_dir())
    if not (runs_dir / "mlflow.db").is_file():
        raise ConfigError(f"no MLflow store at {runs_dir / 'mlflow.db'}; run a study first (make study) "
                          "or pass --runs-dir")
    if not _has_mlflow():
        raise ConfigError("mlflow is not installed; run make install")
    print(f"MLflow UI for {runs_dir / 'mlflow.db'}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(ui_command(runs_dir, args.port))
    except KeyboardInterrupt:
        return 0


def _has_mlflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


SUBCOMMANDS["study"] = ("search the pruning design space with Optuna, tracked in MLflow", _study_args, _run_study)
SUBCOMMANDS["ui"] = ("start the MLflow UI for the study stores", _ui_args, _run_ui)
