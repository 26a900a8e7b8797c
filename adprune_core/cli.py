"""The ``adprune`` command line.

    adprune train --config FILE [--set KEY=VALUE ...] [--out DIR]
    adprune config [--config FILE] [--set KEY=VALUE ...]     # print the resolved config
    adprune options                                          # every config key with its meaning

User errors (``ADPruneError``) print one line and exit with code 2; nothing else is caught.
These are the trainer library's own commands (``COMMANDS``); the ``adprune`` front door
(``adprune/cli.py``) adds those of ``study`` and ``reports``, which this package never imports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from adprune_core.config import config_to_dict, describe_options, load_config
from adprune_core.errors import ADPruneError
from adprune_core.files import check_writable_dir

EXIT_USER_ERROR = 2

# A command: (help text, add_arguments(parser), run(args) -> exit code).
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset, e.g. configs/smoke.yaml (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set train.epochs=10 --set prune.epochs=[3,6]")


def _train_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--out", help="output folder (default: runs/train/<model>-<data>-<time>)")


def _run_train(args: argparse.Namespace) -> int:
    from adprune_core.trainer import train

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else (
        Path("runs/train") / f"{cfg.model.name.replace(':', '-')}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable_dir(out, "--out (OUT=)")
    result = train(cfg, out)
    final = result.summary.final
    if final is None:  # no epoch ran (train.epochs=0)
        print(f"no epoch ran; wrote {out / 'summary.json'} and {out / 'model'}")
        return 1
    test = f", test_top1 {final.test_top1:.4f}" if final.test_top1 is not None else ""
    print(f"{final.status}: val_top1 {final.val_top1:.4f}{test}, params {final.params:,} "
          f"({final.compression_params:.1f}x smaller), flops {final.flops:,} "
          f"({final.compression_flops:.1f}x fewer), train compute {final.train_flops_cum:.3e} FLOPs")
    print(f"wrote {out / 'summary.json'} and {out / 'model'}")
    return 0 if final.status in ("completed", "stopped") else 1


def _run_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def _run_options(_args: argparse.Namespace) -> int:
    print(describe_options())
    return 0


COMMANDS: dict[str, Command] = {
    "train": ("train a network with activation-density pruning", _train_args, _run_train),
    "config": ("print the resolved config", _add_config_args, _run_config),
    "options": ("list every config key with its default and meaning", lambda p: None, _run_options),
}


def build_parser(commands: Mapping[str, Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adprune", description="Activation-density pruning in training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None, commands: Mapping[str, Command] = COMMANDS) -> int:
    """Run one of ``commands`` (default: the trainer's own) from ``argv``; the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(commands).parse_args(argv)
    args.argv = argv  # the command line as given, for commands that start copies of themselves
    try:
        return args.run(args)
    except ADPruneError as exc:
        print(f"adprune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("adprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
