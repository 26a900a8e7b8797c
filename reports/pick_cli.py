"""``adprune pick`` and ``adprune control``, registered into ``adprune_core.cli.SUBCOMMANDS``.

    adprune pick [--runs-dir runs] [--study NAME] (--trial N | --knee) [--out DIR]
    adprune control [--runs-dir runs] [--study NAME] --trial N [--uniform]

Without ``--study`` the store's only study is used. The runtime folder defaults to ``$RUNS_DIR`` or
``runs``. Mistakes (no store, unknown study or trial, a trial that did not complete, both or neither of
``--trial``/``--knee``) are one-line ``ADPruneError``s (exit code 2). See docs/pick.md.
"""

from __future__ import annotations

import argparse
import sys

from adprune_core.cli import SUBCOMMANDS
from adprune_core.errors import ADPruneError
from study.cli import add_store_args, stores_from_args
from study.stores import location


def _common_args(p: argparse.ArgumentParser) -> None:
    add_store_args(p)
    p.add_argument("--study", default=None, help="study name (default: the store's only study)")
    p.add_argument("--trial", type=int, default=None, help="trial number (a COMPLETE trial)")


def _pick_args(p: argparse.ArgumentParser) -> None:
    _common_args(p)
    p.add_argument("--knee", action="store_true", help="pick the knee of the accuracy/compression Pareto front")
    p.add_argument("--out", default=None, help="export folder (default <runs>/picks/<study>/trial-<n>)")


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _run_pick(args: argparse.Namespace) -> int:
    from reports.pick import choose_trial, fewer, pick
    from reports.trial_lookup import open_study

    view = open_study(stores_from_args(args), args.study)
    trial, reason = choose_trial(view, args.trial, args.knee)
    result = pick(view, trial, args.out, reason)
    m = result.metrics
    vs = (f" ({m['accuracy_change']:+.4f} vs the baseline, trial {m['baseline']['trial']})"
          if m.get("baseline") else " (no completed baseline)")
    print(f"picked trial {result.number} of study {result.study!r}: val_top1 {m['val_top1']:.4f}{vs}, "
          f"params {m['params']:,} ({fewer(m['compression_params'], m['prune_rounds'])}), flops {m['flops']:,} "
          f"({fewer(m['compression_flops'], m['prune_rounds'])})"
          + (f", training compute {m['train_compute_reduction']:.2f}x less" if m.get("train_compute_reduction")
             else ""))
    if not m["prune_rounds"]:
        _warn(f"trial {result.number} was never pruned: it is the dense network, not a compressed one")
    if reason:
        print(f"why: {reason}")
    print(f"registered: {result.model_name} version {result.version}, alias {result.alias} "
          f"({m['registry']['uri']} in {location(m['registry']['tracking_uri'])})")
    files = sorted(p.name for p in result.out_dir.iterdir() if p.is_file())
    print(f"exported: {result.out_dir}/ ({', '.join(files)}); loading: {result.out_dir / 'README.md'}")
    checks = m["checks"]
    onnx = m["onnx"]
    print("checks: the export and the models:/ URI reload with "
          + ("identical outputs" if all(checks.values()) else "DIFFERENT outputs")
          + (f"; {onnx['note']}" if onnx.get("note") else ""))
    for note in result.warnings:
        _warn(note)
    return 0


def _control_args(p: argparse.ArgumentParser) -> None:
    _common_args(p)
    p.add_argument("--uniform", action="store_true",
                   help="also train a uniform-width network with the trial's final FLOPs")


def _run_control(args: argparse.Namespace) -> int:
    from reports.control import comparison_rows, format_comparison, run_controls, verdict
    from reports.pick import mlflow_client
    from reports.trial_lookup import completed_trial, open_study

    view = open_study(stores_from_args(args), args.study)
    if args.trial is None:
        raise ADPruneError(f"--trial N is required (make control TRIAL=n); the Pareto trials of study "
                           f"{view.name!r}: {view.pareto_numbers()}")
    trial = completed_trial(view, args.trial)
    results = run_controls(view, trial, mlflow_client(view.stores), args.uniform,
                           log=lambda line: print(line, flush=True))
    rows = comparison_rows(trial, results, view.baseline)
    print(format_comparison(rows))
    for line in verdict(rows):
        print(line)
    return 0


SUBCOMMANDS["pick"] = ("register one trial's pruned network in the MLflow registry and export it",
                       _pick_args, _run_pick)
SUBCOMMANDS["control"] = ("retrain a trial's final architecture from scratch (and a uniform-width net) as controls",
                          _control_args, _run_control)
