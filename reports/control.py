"""Controls for a picked trial: did pruning in training pay?

For COMPLETE, pruned trial n, with the trial's resolved trainer config, ``prune.schedule=none`` and the
same ``train.epochs``:

- **scratch**: the trial's *final* architecture (``group_widths`` of its ``model/model.json``) trained
  from a fresh initialisation (``adprune_core.trainer.train(..., init_widths=...)``): the "scratch"
  control of Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019);
- **uniform**: the dense architecture with every layer narrowed by one ``model.width_mult``, chosen so
  that its inference FLOPs come as close as possible to the trial's final FLOPs (``match_flops``, a
  bisection on the monotone step function width_mult -> FLOPs of the built network).

Each control is one MLflow run in the study's experiment, nested under the study's parent run, named
``trial-NNNN-<kind>``, with the contract the report reads:
tags ``adprune.role=control``, ``adprune.control_of=<trial number>``, ``adprune.control_kind=scratch|uniform``;
metrics ``final/val_top1``, ``final/params``, ``final/flops``, ``final/train_flops_cum``,
``final/compression_params``, ``final/compression_flops`` (dense / control, where *dense* is the trial's
dense network, so the uniform control is compared with the same reference), plus the per-epoch metrics
of a trial run (``study.tracking.TrialRun``) and the artifacts ``summary.json``, ``density_width.png``,
``model/``. Trainer output: ``<runs>/studies/<study>/controls/trial-NNNN-<kind>/``; the trainer's own
``summary.json`` measures compression against the dense network of *its* config (for the uniform control,
itself: 1.0x).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from adprune_core.config import Config, ModelConfig, config_from_dict, config_to_dict
from adprune_core.costs import inference_flops
from adprune_core.data import ImageData, load_dataset
from adprune_core.errors import ADPruneError, ConfigError
from adprune_core.export import read_architecture
from adprune_core.models import TORCHVISION_PREFIX, build_model
from adprune_core.trainer import train
from reports.pareto import CONTROL_KINDS
from reports.trial_lookup import StudyView, trial_model_dir
from study.plots import layer_curves, render
from study.stores import location
from study.tracking import PLOT_FILE, TrialRun, flatten

CONTRACT_METRICS = ("val_top1", "params", "flops", "train_flops_cum", "compression_params", "compression_flops")
_WIDTH_MULT = next(f for f in dataclasses.fields(ModelConfig) if f.name == "width_mult").metadata
WIDTH_MULT_MIN, WIDTH_MULT_MAX = float(_WIDTH_MULT["lo"]), float(_WIDTH_MULT["hi"])  # model.width_mult's range


# --- the uniform-width search (pure given a FLOPs function) ---------------------------------------

@dataclass(frozen=True)
class WidthMatch:
    """The width multiplier whose network's FLOPs are nearest the target."""

    width_mult: float
    flops: int
    target_flops: int
    evaluations: int

    @property
    def relative_error(self) -> float:
        return (self.flops - self.target_flops) / self.target_flops


def match_flops(flops_of: Callable[[float], int], target_flops: int, lo: float = WIDTH_MULT_MIN,
                hi: float = 1.0, rel_tol: float = 1e-4) -> WidthMatch:
    """The ``m`` in [lo, WIDTH_MULT_MAX] whose ``flops_of(m)`` is nearest ``target_flops`` (> 0).

    ``flops_of`` must be non-decreasing in ``m`` (widths are rounded, so it is a step function): the
    bisection keeps ``flops_of(lo) < target <= flops_of(hi)`` until hi - lo <= rel_tol * hi, then takes
    the nearer of the two steps around the target (equal distances: the wider network). ``hi`` is the
    first upper guess, doubled while too small."""
    if target_flops <= 0:
        raise ValueError(f"target_flops {target_flops} must be > 0")
    seen: dict[float, int] = {}

    def f(m: float) -> int:
        if m not in seen:
            seen[m] = int(flops_of(m))
        return seen[m]

    hi = min(max(hi, lo), WIDTH_MULT_MAX)
    while f(hi) < target_flops and hi < WIDTH_MULT_MAX:
        hi = min(hi * 2.0, WIDTH_MULT_MAX)
    if f(lo) >= target_flops or f(hi) < target_flops:  # the target lies outside what the range can reach
        m = lo if f(lo) >= target_flops else hi
        return WidthMatch(m, f(m), target_flops, len(seen))
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if f(mid) < target_flops:
            lo = mid
        else:
            hi = mid
    m = lo if target_flops - f(lo) < f(hi) - target_flops else hi
    return WidthMatch(m, f(m), target_flops, len(seen))


def uniform_width_mult(model_cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int],
                       target_flops: int) -> WidthMatch:
    """``match_flops`` over networks built from ``model_cfg`` with only ``width_mult`` changed."""
    if model_cfg.name.startswith(TORCHVISION_PREFIX):
        raise ConfigError(f"model.name: {model_cfg.name} has no model.width_mult, so no uniform-width control; "
                          "run the scratch control only (leave out --uniform / UNIFORM=1)")

    def flops_of(m: float) -> int:
        return inference_flops(build_model(dataclasses.replace(model_cfg, width_mult=m), num_classes, image_shape),
                               image_shape)

    return match_flops(flops_of, target_flops, hi=model_cfg.width_mult)


# --- configs and runs ------------------------------------------------------------------------------

@dataclass
class ControlResult:
    """One trained control: its MLflow run, trainer output, contract metrics and trainer status."""

    kind: str
    run_id: str
    out_dir: Path
    metrics: dict[str, float]  # the contract metrics (compression against the trial's dense network)
    status: str
    width_match: WidthMatch | None = None


def control_config(trial_config: Mapping[str, Any], width_mult: float | None = None) -> Config:
    """The trial's resolved config without pruning (``prune.schedule=none``), optionally another width_mult."""
    raw = {section: dict(values) for section, values in trial_config.items()}
    raw["prune"].update(schedule="none", epochs=[])
    if width_mult is not None:
        raw["model"]["width_mult"] = width_mult
    return config_from_dict(raw)


def controllable(view: StudyView, trial: FrozenTrial) -> None:
    """ADPruneError unless ``trial`` has a pruned architecture to control."""
    if trial.user_attrs.get("baseline"):
        raise ADPruneError(f"trial {trial.number} of study {view.name!r} is the dense baseline: it has no pruned "
                           f"architecture to retrain; pick a pruned trial (Pareto trials: {view.pareto_numbers()})")
    if not trial.user_attrs["final"].get("prune_rounds"):
        raise ADPruneError(f"trial {trial.number} of study {view.name!r} never pruned (prune_rounds 0): its network "
                           "is the dense one and the baseline already is its control; pick a pruned trial "
                           f"(Pareto trials: {view.pareto_numbers()})")


def trial_architecture(trial: FrozenTrial, client: Any) -> dict[str, Any]:
    """The trial's ``model.json``: group widths, number of classes, input shape."""
    with tempfile.TemporaryDirectory() as tmp:
        return read_architecture(trial_model_dir(trial, client, Path(tmp)))


def plan_uniform(trial: FrozenTrial, arch: Mapping[str, Any], model_cfg: ModelConfig) -> WidthMatch:
    """The uniform control's width multiplier: FLOPs nearest the trial's final FLOPs. ``arch``: the trial's
    ``model.json`` (``trial_architecture``); ``model_cfg``: the model section of its ``control_config``."""
    return uniform_width_mult(model_cfg, arch["num_classes"], tuple(arch["image_shape"]),
                              int(trial.user_attrs["final"]["flops"]))


def run_controls(view: StudyView, trial: FrozenTrial, client: Any, uniform: bool = False,
                 log: Callable[[str], None] = print) -> list[ControlResult]:
    """The scratch control of COMPLETE, pruned ``trial`` and, with ``uniform``, the uniform-width one."""
    controllable(view, trial)
    arch = trial_architecture(trial, client) if uniform else None  # else run_control reads it, once
    cfg = control_config(trial.user_attrs["config"])
    match = plan_uniform(trial, arch, cfg.model) if arch is not None else None
    if match is not None:
        log(f"uniform control: width_mult {match.width_mult:.4g} gives {match.flops:,} FLOPs, "
            f"{match.relative_error:+.2%} from the trial's {match.target_flops:,} ({match.evaluations} networks built)")
    data = load_dataset(cfg.data)
    results = []
    for kind in (k for k in CONTROL_KINDS if uniform or k == "scratch"):
        log(f"training the {kind} control of trial {trial.number} ({trial.user_attrs['epochs']} epochs) ...")
        results.append(run_control(view, trial, kind, client, data, match if kind == "uniform" else None,
                                   cfg=cfg, arch=arch))
        r = results[-1]
        log(f"  {kind}: {r.status}, val_top1 {r.metrics['val_top1']:.4f}, MLflow run {r.run_id}, output {r.out_dir}")
    return results


def controls_dir(view: StudyView, number: int, kind: str) -> Path:
    return view.runs_dir / "studies" / view.name / "controls" / f"trial-{number:04d}-{kind}"


def run_control(view: StudyView, trial: FrozenTrial, kind: str, client: Any, data: ImageData,
                width_match: WidthMatch | None = None, cfg: Config | None = None,
                arch: Mapping[str, Any] | None = None) -> ControlResult:
    """Train one control of ``trial`` and record it as an MLflow run (see the module docstring).

    ``cfg``: ``control_config`` of the trial's config, ``arch``: its ``trial_architecture``, when the caller
    has them already (read here otherwise)."""
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control kind {kind!r}; known: {', '.join(CONTROL_KINDS)}")
    if (kind == "uniform") != (width_match is not None):
        raise ValueError("the uniform control, and only it, needs a width_match")
    if width_match is not None:
        cfg = control_config(trial.user_attrs["config"], width_match.width_mult)
    elif cfg is None:
        cfg = control_config(trial.user_attrs["config"])
    out = controls_dir(view, trial.number, kind)
    widths = None
    if kind == "scratch":
        widths = (arch if arch is not None else trial_architecture(trial, client))["group_widths"]
    run_id = _start_run(view, trial, kind, client, cfg, out, width_match)
    tracker = TrialRun(client, run_id, f"trial-{trial.number:04d}-{kind}")
    try:
        summary = train(cfg, out, callbacks=[tracker], data=data, init_widths=widths).summary
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except Exception as exc:
        client.set_tag(run_id, "adprune.fail_reason", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    final = summary["final"]
    dense = trial.user_attrs["final"]
    metrics = {"val_top1": float(final["val_top1"]), "params": float(final["params"]), "flops": float(final["flops"]),
               "train_flops_cum": float(final["train_flops_cum"]),
               "compression_params": dense["params_dense"] / max(final["params"], 1),
               "compression_flops": dense["flops_dense"] / max(final["flops"], 1)}
    _finish_run(client, run_id, out, summary, metrics, dense)
    if trial.user_attrs.get("mlflow_run_id"):  # so the trial's run points at its newest control
        client.set_tag(trial.user_attrs["mlflow_run_id"], f"adprune.control_{kind}", run_id)
    return ControlResult(kind, run_id, out, metrics, final["status"], width_match)


def _start_run(view: StudyView, trial: FrozenTrial, kind: str, client: Any, cfg: Config, out: Path,
               width_match: WidthMatch | None) -> str:
    from mlflow.entities import Param

    exp = client.get_experiment_by_name(view.name)
    if exp is None:
        raise ADPruneError(f"study {view.name!r} has no MLflow experiment in {location(view.stores.tracking_uri)}; "
                           "was it run with another --runs-dir?")
    tags = {"adprune.role": "control", "adprune.control_of": str(trial.number), "adprune.control_kind": kind,
            "optuna.study_name": view.name, "adprune.out_dir": str(out)}
    parent = view.study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp.experiment_id, run_name=f"trial-{trial.number:04d}-{kind}", tags=tags)
    params = flatten({"control": {"of_trial": trial.number, "kind": kind}, **config_to_dict(cfg)})
    if width_match is not None:
        params.update({"control.width_mult": repr(width_match.width_mult),
                       "control.target_flops": str(width_match.target_flops)})
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def _finish_run(client: Any, run_id: str, out: Path, summary: Mapping[str, Any], metrics: Mapping[str, float],
                dense: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    final = {k: v for k, v in summary["final"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    final.update(metrics, params_dense=dense["params_dense"], flops_dense=dense["flops_dense"])
    client.log_batch(run_id, metrics=[Metric(f"final/{k}", float(v), now, 0) for k, v in final.items()])
    client.log_artifact(run_id, str(out / "summary.json"))
    with tempfile.TemporaryDirectory() as tmp:
        if summary.get("epochs"):
            client.log_artifact(run_id, str(render(layer_curves(summary), Path(tmp) / PLOT_FILE,
                                                   title=f"control: {out.name}")))
        (Path(tmp) / "control.json").write_text(json.dumps({"metrics": metrics, "dense": {
            "params": dense["params_dense"], "flops": dense["flops_dense"]}}, indent=2))
        client.log_artifact(run_id, str(Path(tmp) / "control.json"))
    if (out / "model").is_dir():
        client.log_artifacts(run_id, str(out / "model"), artifact_path="model")
    status = summary["final"]["status"]
    client.set_tag(run_id, "adprune.status", status)
    client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")


# --- the comparison ----------------------------------------------------------------------------------

def comparison_rows(trial: FrozenTrial, controls: list[ControlResult],
                    baseline: FrozenTrial | None) -> list[dict[str, Any]]:
    """One row per network: the trial, each control, the baseline (plain data for the table)."""
    def row(label: str, m: Mapping[str, Any]) -> dict[str, Any]:
        return {"label": label, **{k: float(m[k]) for k in ("val_top1", "params", "flops", "train_flops_cum")}}

    rows = [row(f"trial {trial.number} (pruned in training)", trial.user_attrs["final"])]
    for c in controls:
        label = ("scratch (same widths)" if c.kind == "scratch"
                 else f"uniform (width_mult {c.width_match.width_mult:.4g})")
        rows.append(row(label, c.metrics))
    if baseline is not None:
        rows.append(row(f"baseline (dense, trial {baseline.number})", baseline.user_attrs["final"]))
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The table: val_top1 and its change vs the first row (the trial), params, FLOPs, training FLOPs."""
    first = rows[0]
    width = max(len(r["label"]) for r in rows)
    lines = [f"{'':<{width}}  {'val_top1':>8}  {'vs trial':>8}  {'params':>11}  {'flops':>10}  {'train FLOPs':>11}"]
    for r in rows:
        delta = "" if r is first else f"{r['val_top1'] - first['val_top1']:+.4f}"
        lines.append(f"{r['label']:<{width}}  {r['val_top1']:>8.4f}  {delta:>8}  {int(r['params']):>11,}  "
                     f"{r['flops']:>10.4g}  {r['train_flops_cum']:>11.4g}")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """One line per control: the trial's accuracy edge over it, and what that cost in training compute."""
    trial = rows[0]
    out = []
    for r in rows[1:]:
        if r["label"].startswith("baseline"):
            continue
        edge = trial["val_top1"] - r["val_top1"]
        cost = trial["train_flops_cum"] / r["train_flops_cum"] if r["train_flops_cum"] else float("nan")
        word = "paid" if edge > 0 else "did not pay"
        out.append(f"vs {r['label']}: pruning in training {word} in accuracy ({edge:+.4f} val_top1) at "
                   f"{cost:.2f}x its training compute")
    return out
