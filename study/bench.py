"""``make bench-study``: the same seeded study without and with shared prefixes, side by side in one run,
written to docs/benchmarks.md (section ``study-<device>``).

    python -m study.bench [--out docs/benchmarks.md] [--cases synthetic,cifar10] [--trials N]

Per case, two fresh runtime folders in a temporary folder: the study with ``share.enabled=false`` (what
``--no-share`` sets), then with sharing, the same seed, in this process, without progress bars; the
dataset is loaded once before both (in-process cache), so neither pays for decoding. Figures: the wall
time of the whole ``run_study`` (start-up, MLflow and Optuna included), the CPU time of this process
during it (all threads; less sensitive than wall time to other processes on a shared machine), the sum
of the trials' own durations, trials per hour, the training FLOPs the trials computed
(``train_flops_spent``) and counted (``train_flops_cum``), and whether the two studies hold the same
trials (params, states, values, per-epoch records) and the same Pareto front.

Cases: ``synthetic`` (what ``make study`` runs: configs/study/synthetic-vgg11.yaml, 10 trials of 6
epochs, first prunes at 15-50% of the run) and ``cifar10`` (configs/study/imagefolder-vgg19.yaml on
../shared/data/cifar10-jpeg.zip with a narrow VGG, VGG-11 at 1/8 width, to stay affordable on two shared
cores: 5,000 training and 1,000 validation images, 10 trials of 10 epochs, first prunes at 10-50% of the
run; skipped when the data is not there).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adprune_core.bench import write_section
from adprune_core.data import load_dataset
from study.runner import run_study
from study.sharing import sharing_totals
from study.space import load_study_config
from study.trial_record import TrialRecord
from study.trials import open_study

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"


@dataclass(frozen=True)
class Case:
    name: str
    config: Path
    overrides: tuple[str, ...]
    trials: int
    needs: Path | None = None


CASES = {
    "synthetic": Case("synthetic-vgg11", ROOT / "configs/study/synthetic-vgg11.yaml", ("train.progress=false",), 10),
    "cifar10": Case("cifar10-jpeg-vgg11x0.125", ROOT / "configs/study/imagefolder-vgg19.yaml",
                    (f"data.root={CIFAR_ZIP}", "data.train_size=5000", "data.val_size=1000", "model.name=vgg11",
                     "model.width_mult=0.125", "train.epochs=10", "train.progress=false"), 10, CIFAR_ZIP),
}


@dataclass
class Result:
    sharing: bool
    wall_s: float
    cpu_s: float  # this process's CPU time (all threads) during the study
    trial_s: float  # sum of the trials' own durations
    trials: list[Any]
    front: list[tuple[int, tuple[float, ...]]]
    flops_spent: float
    flops_counted: float
    forked: int
    reused_epochs: int


def run_case(case: Case, trials: int, tmp: Path, share: bool) -> Result:
    cfg = load_study_config(case.config, [*case.overrides, f"share.enabled={str(share).lower()}"])
    runs = tmp / ("shared" if share else "scratch")
    started, cpu = time.perf_counter(), time.process_time()
    run_study(cfg, case.name, trials, runs, progress=False, log=lambda *_: None)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    study = open_study(cfg, case.name, runs)
    done = study.get_trials(deepcopy=False)
    totals = sharing_totals(done)
    front = [(t.number, tuple(t.values)) for t in sorted(study.best_trials, key=lambda t: t.number)]
    trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done if t.datetime_complete)
    return Result(share, wall, cpu, trial_s, done, front, totals.train_flops_spent, totals.train_flops_cum,
                  totals.forked, totals.reused_epochs)


def same_trials(a: list[Any], b: list[Any]) -> bool:
    """Trial by trial: params, state, values and the per-epoch records (wall times are not recorded there)."""
    def key(t: Any) -> tuple:
        return t.number, t.params, t.state, t.values, TrialRecord.from_trial(t).records

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))


def render(rows: list[tuple[Case, int, Result, Result]], skipped: list[str], command: str, load: tuple) -> str:
    name = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    lines = [f"## Shared-prefix studies: {name}", "", f"Command: `{command}`  ",
             f"torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; "
             f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (the machine is shared: wall "
             "times carry that noise, FLOPs do not)", "",
             "The same seeded study twice in one run: every trial from scratch (`SHARE=0`, `--no-share`), then "
             "with shared prefixes (the default). `wall`: the whole `run_study`; `CPU`: the CPU time of the "
             "process meanwhile (all threads); `trials`: the sum of the trials' own durations; `spent`: training "
             "FLOPs the trials computed; `counted`: their `train_flops_cum` (whole runs, what the objective counts).",
             "",
             "| study | trials x epochs | sharing | wall s | CPU s | trials s | trials/hour | FLOPs spent | "
             "FLOPs counted | forked (epochs reused) | same trials | same front |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, epochs, off, on in rows:
        same, front = same_trials(off.trials, on.trials), off.front == on.front
        for r in (off, on):
            lines.append(f"| {case.name} | {len(r.trials)} x {epochs} | {'on' if r.sharing else 'off'} | "
                         f"{r.wall_s:.0f} | {r.cpu_s:.0f} | {r.trial_s:.0f} | {3600 * len(r.trials) / r.wall_s:.0f} | "
                         f"{r.flops_spent:.3g} | {r.flops_counted:.3g} | {r.forked} ({r.reused_epochs}) | "
                         f"{'yes' if same else 'NO'} | {'yes' if front else 'NO'} |")
        lines.append(f"| {case.name} | | **off / on** | **{off.wall_s / on.wall_s:.2f}x** | "
                     f"**{off.cpu_s / on.cpu_s:.2f}x** | **{off.trial_s / on.trial_s:.2f}x** | | "
                     f"**{off.flops_spent / on.flops_spent:.2f}x** | | | | |")
    lines += [""] + [f"Skipped: {s}" for s in skipped] + ([""] if skipped else [])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--cases", default="synthetic,cifar10", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default: the case's)")
    given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(given)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    load_start = os.getloadavg()[0]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="adprune-bench-study-") as tmp:
        for n in names:
            case = CASES[n]
            if case.needs is not None and not case.needs.is_file():
                skipped.append(f"{case.name}: no {case.needs}")
                continue
            trials = args.trials or case.trials
            cfg = load_study_config(case.config, case.overrides)
            load_dataset(cfg.trainer.data)  # decoded once, before both studies
            print(f"{case.name}: {trials} trials x {cfg.trainer.train.epochs} epochs, without sharing ...",
                  file=sys.stderr, flush=True)
            off = run_case(case, trials, Path(tmp) / n, share=False)
            print(f"  {off.wall_s:.0f} s; with sharing ...", file=sys.stderr, flush=True)
            on = run_case(case, trials, Path(tmp) / n, share=True)
            print(f"  {on.wall_s:.0f} s", file=sys.stderr, flush=True)
            rows.append((case, cfg.trainer.train.epochs, off, on))
    command = "make bench-study" + (f" (python -m study.bench {' '.join(given)})" if given else "")
    body = render(rows, skipped, command, (load_start, os.getloadavg()[0]))
    print(body)
    write_section(Path(args.out), "study-gpu" if torch.cuda.is_available() else "study-cpu", body)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
