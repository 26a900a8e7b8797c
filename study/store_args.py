"""The command-line arguments that say where a study's records are: ``--runs-dir``, ``--storage`` and
``--tracking`` (``add_store_args``), read into ``study.stores.Stores`` (``stores_from_args``), and
``without_store_flags`` for the command lines of worker processes, which get the stores from the
environment instead. ``adprune study``/``worker`` and the report commands share them.
"""

from __future__ import annotations

import argparse
import os

from study.stores import STORAGE_ENV, TRACKING_ENV, Stores

RUNS_DIR_ENV = "RUNS_DIR"
STORE_FLAGS = ("--storage", "--tracking")


def default_runs_dir() -> str:
    return os.environ.get(RUNS_DIR_ENV) or "runs"


def add_store_args(p: argparse.ArgumentParser) -> None:
    """``--runs-dir``, ``--storage`` and ``--tracking``: where a command finds the study's records."""
    p.add_argument("--runs-dir", default=None,
                   help=f"runtime folder: trial outputs, and the embedded stores (default ${RUNS_DIR_ENV} or runs)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help=f"Optuna storage URL, e.g. postgresql://USER@HOST:5432/DB (default ${STORAGE_ENV}, "
                        "else <runs>/optuna.db)")
    p.add_argument("--tracking", default=None, metavar="URI",
                   help=f"MLflow tracking URI, e.g. http://HOST:5001 from make mlflow-server (default "
                        f"${TRACKING_ENV}, else <runs>/mlflow.db)")


def stores_from_args(args: argparse.Namespace) -> Stores:
    return Stores.resolve(args.runs_dir or default_runs_dir(), args.storage, args.tracking)


def without_store_flags(argv: list[str]) -> list[str]:
    """``argv`` without ``--storage``/``--tracking`` and their values (workers get them from the environment,
    where other users' ``ps`` does not show a password)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in STORE_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in STORE_FLAGS)):
            out.append(arg)
    return out
