"""``adprune report``, its ``COMMANDS`` for the ``adprune`` front door (``adprune/cli.py``).

    adprune report [--runs-dir runs] [--storage URL] [--tracking URI] [--study NAME] [--out DIR]
                   [--mlflow-url http://127.0.0.1:5000] [--no-log]

Reads the study (without ``--study``: the storage's only one) and its MLflow runs, writes
``<runs>/reports/<study>/`` (``index.html``, ``summary.md``, ``trials.csv``, ``pareto.csv``; see
``docs/report.md``) and logs those files to the study's parent MLflow run under ``report/``.
Bad input (no storage, unknown or ambiguous study) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from adprune_core.cli import Command
from adprune_core.files import check_writable_dir
from reports.load import DEFAULT_MLFLOW_URL, StudyRuns, load_study_data
from reports.render import write_report
from reports.report import Report, build_report
from study.cli import add_store_args, stores_from_args
from study.stores import RUNS_DIR_FLAG, Stores, without_credentials

ARTIFACT_DIR = "report"


def report_dir(runs_dir: str | Path, study: str) -> Path:
    """``<runs>/reports/<study>``, the study name made safe for a folder name."""
    return Path(runs_dir) / "reports" / re.sub(r"[^A-Za-z0-9_.-]", "_", study)


@dataclass
class WrittenReport:
    """A report written to disk (and logged to the study's MLflow run when it has one)."""

    report: Report
    paths: list[Path]  # index.html, summary.md, trials.csv, pareto.csv
    logged_to: str | None  # the parent run id the files were logged to, if any
    seconds: float


def make_report(where: Stores | str | Path, study: str | None = None, out_dir: str | Path | None = None,
                mlflow_url: str | None = None, log_to_mlflow: bool = True) -> WrittenReport:
    """Load -> compute -> write -> log, from the study's stores (``Stores.of(where)``). ``out_dir``
    defaults to ``report_dir(runs_dir, study)``; ``mlflow_url`` (the UI the links point to) to the
    tracking server, or ``make ui``'s address for embedded stores."""
    start = time.perf_counter()
    stores = Stores.of(where)
    if mlflow_url is None:
        mlflow_url = without_credentials(stores.tracking_uri) if stores.tracking_server else DEFAULT_MLFLOW_URL
    data = load_study_data(stores, study, mlflow_url)
    report = build_report(data)
    paths = write_report(report, out_dir or report_dir(stores.runs_dir, data.name))
    logged = log_report(data, paths) if log_to_mlflow else None
    return WrittenReport(report, paths, logged, time.perf_counter() - start)


def log_report(data: StudyRuns, paths: list[Path]) -> str | None:
    """Log ``paths`` to the study's parent MLflow run under ``report/``; the run id, or None without one."""
    if not data.parent_run_id or data.parent_run_id not in data.run_ids:
        return None
    for path in paths:
        data.client.log_artifact(data.parent_run_id, str(path), artifact_path=ARTIFACT_DIR)
    return data.parent_run_id


def _args(p: argparse.ArgumentParser) -> None:
    add_store_args(p)
    p.add_argument("--study", help="study name (default: the storage's only study)")
    p.add_argument("--out", help="output folder (default <runs>/reports/<study>)")
    p.add_argument("--mlflow-url", default=None,
                   help=f"base URL of the MLflow UI the report links to (default: the tracking server, or "
                        f"{DEFAULT_MLFLOW_URL} of make ui)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the study's parent MLflow run")


def _run(args: argparse.Namespace) -> int:
    stores = stores_from_args(args)
    # before reading anything: where the report goes, and the store it is logged to, must take writes
    check_writable_dir(args.out or stores.runs_dir / "reports", "--out" if args.out else RUNS_DIR_FLAG)
    if not args.no_log and not stores.tracking_server:
        stores.check_writable()
    result = make_report(stores, args.study, args.out, args.mlflow_url, log_to_mlflow=not args.no_log)
    r = result.report
    print(f"study {r.study!r}: {sum(r.states.values())} trials, {len(r.pareto)} on the Pareto front "
          f"({', '.join(map(str, r.pareto)) or 'none'})" + (f"; hypervolume {r.hv_history[-1][1]:.4f}"
                                                          if r.hv_history else ""))
    for note in r.notes:
        print(f"note: {note}")
    for path in result.paths:
        print(f"wrote {path}")
    if result.logged_to:
        print(f"logged to MLflow run {result.logged_to} under {ARTIFACT_DIR}/")
    print(f"open {result.paths[0]} in a browser ({result.seconds:.1f} s)")
    return 0


COMMANDS: dict[str, Command] = {
    "report": ("write the study's Pareto report (HTML, Markdown, CSV) and log it to MLflow", _args, _run),
}
