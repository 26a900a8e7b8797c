"""``adprune pick`` and ``adprune control``, its ``COMMANDS`` for the ``adprune`` front door (``adprune/cli.py``).

    adprune pick [--runs-dir runs] [--study NAME] (--trial N | --knee) [--out DIR]
    adprune control [--runs-dir runs] [--study NAME] (--trial N [--trial M ...] | --knee | --picks) [--uniform]
                    [--kinds scratch,uniform,random,repeat] [--seeds K] [--again]

Without ``--study`` the store's only study is used. The runtime folder defaults to ``$RUNS_DIR`` or
``runs``. Mistakes (no store, unknown study or trial, a trial that did not complete, both or neither of
``--trial``/``--knee``) are one-line ``ADPruneError``s (exit code 2). See docs/pick.md.
"""

from __future__ import annotations

import argparse
import sys

from adprune_core.cli import Command
from adprune_core.errors import ADPruneError
from adprune_core.files import check_writable_dir
from reports.pareto import CONTROL_KINDS
from study.cli import add_store_args, stores_from_args
from study.stores import RUNS_DIR_FLAG, location


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
    from followup.pick import choose_trial, default_out_dir, fewer, pick
    from reports.study_view import open_study_view

    view = open_study_view(stores_from_args(args), args.study)
    trial, reason = choose_trial(view, args.trial, args.knee)
    # before any write: the export folder, and an embedded registry (mlflow.db in the runtime folder)
    check_writable_dir(args.out or default_out_dir(view.runs_dir, view.name, trial.number),
                       "--out (OUT=)" if args.out else RUNS_DIR_FLAG)
    if not view.stores.tracking_server:
        view.stores.check_writable()
    result = pick(view, trial, args.out, reason)
    m = result.metrics
    vs = (f" ({m['accuracy_change']:+.4f} vs the baseline, trial {m['baseline']['trial']})"
          if m.get("baseline") else " (no completed baseline)")
    test = f", test_top1 {m['test_top1']:.4f}" if m.get("test_top1") is not None else ""
    print(f"picked trial {result.number} of study {result.study!r}: val_top1 {m['val_top1']:.4f}{vs}{test}, "
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
    add_store_args(p)
    p.add_argument("--study", default=None, help="study name (default: the store's only study)")
    p.add_argument("--trial", type=int, action="append", default=None,
                   help="a COMPLETE, pruned trial to control (repeat for several)")
    p.add_argument("--knee", action="store_true",
                   help="control the knee of the accuracy/compression front of the pruned Pareto trials")
    p.add_argument("--picks", action="store_true", help="control every trial picked with adprune pick")
    p.add_argument("--uniform", action="store_true",
                   help="also train a uniform-width network with the trial's final FLOPs (same as adding uniform "
                        "to --kinds)")
    p.add_argument("--kinds", default=None,
                   help=f"control kinds, comma-separated, from {','.join(CONTROL_KINDS)} (default scratch)")
    p.add_argument("--seeds", type=int, default=None,
                   help="train.seed values per kind: the trial's seed and the next ones (default 1: the trial's)")
    p.add_argument("--again", action="store_true", help="train a (kind, seed) again even if it finished before")


def control_kinds(text: str | None, uniform: bool) -> list[str]:
    """``--kinds`` (comma-separated) plus ``uniform`` for ``--uniform``; default ``scratch``."""
    kinds = [k.strip() for k in (text or "scratch").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in CONTROL_KINDS]
    if unknown or not kinds:
        raise ADPruneError(f"--kinds: {text!r} must name control kinds from {', '.join(CONTROL_KINDS)}, "
                           "comma-separated (make controls KINDS=scratch,uniform)")
    return kinds + (["uniform"] if uniform and "uniform" not in kinds else [])


def _controlled_trials(view, args: argparse.Namespace) -> list:
    """The trials ``--trial`` / ``--knee`` / ``--picks`` name (exactly one of them)."""
    from followup.pick import knee_choice
    from followup.registry import mlflow_client
    from reports.load import picked_trials
    from reports.trial_lookup import completed_trial
    from study.trial_record import TrialRecord

    if sum(map(bool, (args.trial, args.knee, args.picks))) != 1:
        raise ADPruneError(f"--trial N is required (make control TRIAL=n), or one of --knee / --picks (make controls "
                           f"KNEE=1); the Pareto trials of study {view.name!r}: {view.pareto_numbers()}")
    if args.knee:
        return [knee_choice(view, pruned_only=True)[0]]
    if args.picks:
        picked = [completed_trial(view, n) for n in sorted(picked_trials(mlflow_client(view.stores), view.name))]
        records = {t.number: TrialRecord.from_trial(t) for t in picked}
        pruned = [t for t in picked if not records[t.number].baseline and records[t.number].pruned]
        for t in picked:
            if t not in pruned:
                print(f"note: picked trial {t.number} never pruned (dense): it has no controls", flush=True)
        if not pruned:
            raise ADPruneError(f"study {view.name!r} has no picked pruned trial; pick one first (make pick "
                               f"STUDY={view.name} TRIAL=n), or name trials with TRIAL=n / KNEE=1")
        return pruned
    return [completed_trial(view, n) for n in dict.fromkeys(args.trial)]


def _run_control(args: argparse.Namespace) -> int:
    from followup.control import comparison_text, control_seeds, run_controls
    from followup.registry import mlflow_client
    from reports.study_view import open_study_view

    view = open_study_view(stores_from_args(args), args.study)
    view.stores.check_writable()  # controls train into the runtime folder and log to the study's MLflow store
    kinds = control_kinds(args.kinds, args.uniform)
    trials = _controlled_trials(view, args)
    client = mlflow_client(view.stores)
    for trial in trials:
        run_controls(view, trial, client, kinds, control_seeds(trial, args.seeds), args.again,
                     log=lambda line: print(line, flush=True))
    for trial in trials:
        print(f"\ntrial {trial.number} beside its controls (means ± sd over seeds; make report shows the same):")
        for line in comparison_text(view, trial.number):
            print(line)
    return 0


COMMANDS: dict[str, Command] = {
    "pick": ("register one trial's pruned network in the MLflow registry and export it", _pick_args, _run_pick),
    "control": ("train a trial's controls over seeds: its architecture from scratch, a uniform width, random "
                "channels, its own config with other seeds", _control_args, _run_control),
}
