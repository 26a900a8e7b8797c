"""Controls for a picked trial: did pruning in training, and each of its choices, pay?

For COMPLETE, pruned trial n, with the trial's resolved trainer config, the same ``train.epochs``, data and
validation split, and ``train.seed`` = each of the requested seeds (default: the trial's own):

- **scratch**: the trial's *final* architecture (``group_widths`` of its ``model/model.json``) trained
  from a fresh initialisation without pruning (``adprune_core.trainer.train(..., init_widths=...)``): the
  "scratch" control of Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019);
- **uniform**: the dense architecture with every layer narrowed by one ``model.width_mult``, chosen so
  that its inference FLOPs come as close as possible to the trial's final FLOPs (``match_flops``, a
  bisection on the monotone step function width_mult -> FLOPs of the built network), without pruning;
- **random**: the trial's run replayed with its own prune epochs and widths (``train(..., width_plan=...)``
  from the pruning history in ``model.json``) but the kept channels chosen at random
  (``prune.select=random``, ``prune.channel_density_min=0``): does choosing channels by density matter?
  (Not run for a trial with ``prune.transfer=reinit``: re-initialised at every cut, its channel choice
  cannot matter.)
- **repeat**: the trial's own config with another seed (a repeat at the trial's own seed is the trial
  itself and is not run): the spread of pruning in training.

Each control is one MLflow run in the study's experiment, nested under the study's parent run, named
``trial-NNNN-<kind>-s<seed>``, with the contract the report reads:
tags ``adprune.role=control``, ``adprune.control_of=<trial number>``, ``adprune.control_kind=<kind>``,
``adprune.control_seed=<seed>``; metrics ``final/val_top1``, ``final/test_top1``, ``final/params``,
``final/flops``, ``final/train_flops_cum``, ``final/compression_params``, ``final/compression_flops``
(dense / control, where *dense* is the trial's dense network, so every control is compared with the same
reference), plus the per-epoch metrics of a trial run (``study.tracking.TrialRun``) and the artifacts
``summary.json``, ``density_width.png``, ``model/``. Trainer output:
``<runs>/studies/<study>/controls/trial-NNNN-<kind>-s<seed>/``. A (kind, seed) whose run already finished
is skipped unless ``again`` is asked for, so an interrupted batch of controls resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
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
from adprune_core.records import SUMMARY_FILE, FinalMetrics, RunSummary
from adprune_core.trainer import train
from reports.pareto import CONTROL_KINDS
from reports.study_view import StudyView
from reports.trial_lookup import trial_model_dir
from study.plots import layer_curves, render
from study.stores import location
from study.tracking import PLOT_FILE, TrialRun, flatten, parent_run_id
from study.trial_record import TrialRecord

CONTRACT_METRICS = ("val_top1", "test_top1", "params", "flops", "train_flops_cum", "compression_params",
                    "compression_flops")
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
    """One control (trained now, or found finished): its MLflow run, trainer output, contract metrics, status."""

    kind: str
    seed: int
    run_id: str
    out_dir: Path
    metrics: dict[str, float]  # the contract metrics (compression against the trial's dense network)
    status: str
    width_match: WidthMatch | None = None
    skipped: bool = False  # found finished, not trained again


@dataclass(frozen=True)
class ControlJob:
    """One control to train: its kind and seed, the trainer config, and what ``train`` needs besides it."""

    kind: str
    seed: int
    cfg: Config
    init_widths: Mapping[str, int] | None = None  # scratch: start from these widths
    width_plan: Mapping[int, Mapping[str, int]] | None = None  # random: cut to these widths at these epochs
    width_match: WidthMatch | None = None  # uniform: how its width_mult was found


def _with(trial_config: Mapping[str, Any], seed: int | None, **sections: Mapping[str, Any]) -> Config:
    """The trial's resolved config with ``sections``' keys replaced and, if given, another ``train.seed``."""
    raw = {section: dict(values) for section, values in trial_config.items()}
    for section, values in sections.items():
        raw[section].update(values)
    if seed is not None:
        raw["train"]["seed"] = seed
    return config_from_dict(raw)


def control_config(trial_config: Mapping[str, Any], width_mult: float | None = None,
                   seed: int | None = None) -> Config:
    """The trial's resolved config without pruning (``prune.schedule=none``), optionally another width_mult
    and seed (``trial_config`` is not mutated)."""
    model = {"width_mult": width_mult} if width_mult is not None else {}
    return _with(trial_config, seed, prune={"schedule": "none", "epochs": []}, model=model)


def width_plan_of(arch: Mapping[str, Any]) -> dict[int, dict[str, int]]:
    """Epoch -> group -> width after that epoch's cut, from a saved network's pruning history (``model.json``)."""
    return {int(h["epoch"]): {g: len(kept) for g, kept in h["kept_idxs"].items()} for h in arch.get("history", [])}


def random_config(trial_config: Mapping[str, Any], plan: Mapping[int, Mapping[str, int]], seed: int | None) -> Config:
    """The trial's config set to replay ``plan`` (``width_plan_of``) with random channels: the fixed schedule at
    the plan's epochs, every planned cut kept (``min_gain`` 0), no density floor."""
    epochs = sorted(plan)
    return _with(trial_config, seed, prune={"schedule": "fixed", "epochs": epochs, "max_rounds": len(epochs),
                                            "min_gain": 0.0, "select": "random", "channel_density_min": 0.0})


def _config(trial: FrozenTrial) -> Mapping[str, Any]:
    """The trial's resolved trainer config (``TrialRecord.config``); ADPruneError when it has none."""
    config = TrialRecord.from_trial(trial).config
    if config is None:
        raise ADPruneError(f"trial {trial.number} has no recorded trainer config (user attr 'config'): it never "
                           "started a run; pick a COMPLETE trial")
    return config


def _own_seed(trial: FrozenTrial) -> int:
    """The trial's ``train.seed`` (``TrialRecord.seed``); ADPruneError when it has no config or no seed."""
    _config(trial)
    seed = TrialRecord.from_trial(trial).seed
    if seed is None:
        raise ADPruneError(f"trial {trial.number}'s recorded config has no integer train.seed; pick a COMPLETE trial")
    return seed


def _final(trial: FrozenTrial) -> FinalMetrics:
    """The trial's final metrics; ADPruneError when its run never ended."""
    final = TrialRecord.from_trial(trial).final
    if final is None:
        raise ADPruneError(f"trial {trial.number} has no final metrics (its run never ended); pick a COMPLETE trial")
    return final


def control_seeds(trial: FrozenTrial, count: int | None) -> list[int]:
    """The seeds of the controls: the trial's ``train.seed`` s and the next ``count - 1`` (s, s + 1, ...);
    without ``count``, [s]."""
    first = _own_seed(trial)
    if count is not None and count < 1:
        raise ADPruneError(f"--seeds: {count} must be >= 1 (make controls SEEDS=3)")
    return [first + i for i in range(count or 1)]


def controllable(view: StudyView, trial: FrozenTrial) -> None:
    """ADPruneError unless ``trial`` has a pruned architecture to control."""
    record = TrialRecord.from_trial(trial)
    if record.baseline:
        raise ADPruneError(f"trial {trial.number} of study {view.name!r} is the dense baseline: it has no pruned "
                           f"architecture to retrain; pick a pruned trial (Pareto trials: {view.pareto_numbers()})")
    if not record.pruned:
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
                              _final(trial).flops)


def plan_controls(trial: FrozenTrial, arch: Mapping[str, Any], kinds: Sequence[str], seeds: Sequence[int],
                  match: WidthMatch | None = None) -> list[ControlJob]:
    """The controls to train for ``kinds`` x ``seeds`` (by kind, then seed); ``arch``: the trial's ``model.json``;
    ``match``: the uniform control's width (``plan_uniform``), needed when ``uniform`` is asked for. A repeat
    at the trial's own seed is the trial itself and is left out, and so is the random control of a trial that
    re-initialises at its cuts (``prune.transfer=reinit``: its channel choice cannot matter)."""
    unknown = [k for k in kinds if k not in CONTROL_KINDS]
    if unknown:
        raise ADPruneError(f"--kinds: unknown control kind {unknown[0]!r}; known: {', '.join(CONTROL_KINDS)}")
    config, own = _config(trial), _own_seed(trial)
    plan = width_plan_of(arch)
    jobs = []
    for kind in (k for k in CONTROL_KINDS if k in kinds):
        for seed in seeds:
            if kind == "scratch":
                jobs.append(ControlJob(kind, seed, control_config(config, seed=seed), init_widths=arch["group_widths"]))
            elif kind == "uniform":
                if match is None:
                    raise ValueError("the uniform control needs its width_match")
                jobs.append(ControlJob(kind, seed, control_config(config, match.width_mult, seed), width_match=match))
            elif kind == "random":
                if config["prune"]["transfer"] == "reinit":
                    continue  # re-initialised at every cut: which channels it kept cannot matter
                if not plan:
                    raise ADPruneError(f"trial {trial.number}'s model.json has no pruning history to replay; the "
                                       "random control needs it (re-run the trial with this version)")
                jobs.append(ControlJob(kind, seed, random_config(config, plan, seed), width_plan=plan))
            elif seed != own:
                jobs.append(ControlJob(kind, seed, _with(config, seed)))
    return jobs


def run_controls(view: StudyView, trial: FrozenTrial, client: Any, kinds: Sequence[str] = ("scratch",),
                 seeds: Sequence[int] | None = None, again: bool = False,
                 log: Callable[[str], None] = print) -> list[ControlResult]:
    """Train the controls ``kinds`` x ``seeds`` (default: the trial's own seed) of COMPLETE, pruned ``trial``;
    a (kind, seed) with a finished run is skipped (returned with ``skipped``) unless ``again``."""
    controllable(view, trial)
    arch = trial_architecture(trial, client)
    seeds = list(seeds) if seeds is not None else control_seeds(trial, None)
    match = plan_uniform(trial, arch, control_config(_config(trial)).model) if "uniform" in kinds else None
    if match is not None:
        log(f"uniform control: width_mult {match.width_mult:.4g} gives {match.flops:,} FLOPs, "
            f"{match.relative_error:+.2%} from the trial's {match.target_flops:,} ({match.evaluations} networks built)")
    jobs = plan_controls(trial, arch, kinds, seeds, match)
    if "random" in kinds and _config(trial)["prune"]["transfer"] == "reinit":
        log(f"no random control: trial {trial.number} re-initialises the network at every cut (prune.transfer=reinit), "
            "so which channels it keeps cannot matter")
    done = {} if again else finished_controls(view, trial.number, client)
    data = None
    results = []
    for i, job in enumerate(jobs, 1):
        what = f"[{i}/{len(jobs)}] {job.kind} control of trial {trial.number}, seed {job.seed}"
        found = done.get((job.kind, job.seed))
        if found is not None:
            log(f"{what}: finished before (MLflow run {found.run_id}), skipped")
            results.append(found)
            continue
        log(f"{what} ({job.cfg.train.epochs} epochs) ...")
        data = data or load_dataset(job.cfg.data)  # every control shares the trial's data and split
        r = run_control(view, trial, job, client, data)
        results.append(r)
        log(f"  {r.status}: val_top1 {r.metrics['val_top1']:.4f}, test_top1 {r.metrics['test_top1']:.4f}, "
            f"MLflow run {r.run_id}, output {r.out_dir}")
    return results


def controls_dir(view: StudyView, number: int, kind: str, seed: int) -> Path:
    return view.runs_dir / "studies" / view.name / "controls" / f"trial-{number:04d}-{kind}-s{seed}"


def finished_controls(view: StudyView, number: int, client: Any) -> dict[tuple[str, int], ControlResult]:
    """(kind, seed) -> the latest FINISHED control run of trial ``number`` with the contract metrics."""
    exp = client.get_experiment_by_name(view.name)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`adprune.role` = 'control' and tags.`adprune.control_of` = '{number}' and attributes.status = "
        "'FINISHED'"), order_by=["attributes.start_time ASC"], max_results=1000)
    out = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        seed = tags.get("adprune.control_seed", "")
        if not seed.isdigit() or any(f"final/{k}" not in metrics for k in CONTRACT_METRICS):
            continue
        kind = tags.get("adprune.control_kind", "")
        out[(kind, int(seed))] = ControlResult(kind, int(seed), run.info.run_id, Path(tags.get("adprune.out_dir", "")),
                                               {k: metrics[f"final/{k}"] for k in CONTRACT_METRICS}, "completed",
                                               skipped=True)
    return out


def run_control(view: StudyView, trial: FrozenTrial, job: ControlJob, client: Any, data: ImageData) -> ControlResult:
    """Train one control of ``trial`` and record it as an MLflow run (see the module docstring)."""
    out = controls_dir(view, trial.number, job.kind, job.seed)
    name = out.name
    run_id = _start_run(view, trial, job, client, out)
    tracker = TrialRun(client, run_id, name)
    try:
        summary = train(job.cfg, out, callbacks=[tracker], data=data, init_widths=job.init_widths,
                        width_plan=job.width_plan).summary
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except Exception as exc:
        client.set_tag(run_id, "adprune.fail_reason", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    final, dense, record = summary.final, _final(trial), TrialRecord.from_trial(trial)
    if final is None:
        raise ADPruneError(f"control {out.name} of trial {trial.number} ended without final metrics "
                           f"({out / SUMMARY_FILE}); train it again (make control TRIAL={trial.number})")
    metrics = {k: _number(getattr(final, k)) for k in ("val_top1", "test_top1", "params", "flops", "train_flops_cum")}
    metrics.update(compression_params=dense.params_dense / max(final.params, 1),
                   compression_flops=dense.flops_dense / max(final.flops, 1))
    _finish_run(client, run_id, out, summary, metrics, dense)
    if record.mlflow_run_id:  # so the trial's run points at its newest control
        client.set_tag(record.mlflow_run_id, f"adprune.control_{job.kind}", run_id)
    return ControlResult(job.kind, job.seed, run_id, out, metrics, final.status, job.width_match)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _start_run(view: StudyView, trial: FrozenTrial, job: ControlJob, client: Any, out: Path) -> str:
    from mlflow.entities import Param

    exp = client.get_experiment_by_name(view.name)
    if exp is None:
        raise ADPruneError(f"study {view.name!r} has no MLflow experiment in {location(view.stores.tracking_uri)}; "
                           "was it run with another --runs-dir?")
    tags = {"adprune.role": "control", "adprune.control_of": str(trial.number), "adprune.control_kind": job.kind,
            "adprune.control_seed": str(job.seed), "optuna.study_name": view.name, "adprune.out_dir": str(out)}
    parent = parent_run_id(view.study)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp.experiment_id, run_name=out.name, tags=tags)
    params = flatten({"control": {"of_trial": trial.number, "kind": job.kind, "seed": job.seed},
                      **config_to_dict(job.cfg)})
    if job.width_match is not None:
        params.update({"control.width_mult": repr(job.width_match.width_mult),
                       "control.target_flops": str(job.width_match.target_flops)})
    if job.width_plan:
        params["control.replayed_epochs"] = ",".join(map(str, sorted(job.width_plan)))
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def _finish_run(client: Any, run_id: str, out: Path, summary: RunSummary, metrics: Mapping[str, float],
                dense: FinalMetrics) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ended = summary.final.to_dict() if summary.final is not None else {}
    final = {k: v for k, v in ended.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    final.update(metrics, params_dense=dense.params_dense, flops_dense=dense.flops_dense)
    client.log_batch(run_id, metrics=[Metric(f"final/{k}", float(v), now, 0) for k, v in final.items()])
    client.log_artifact(run_id, str(out / SUMMARY_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        if summary.epochs:
            client.log_artifact(run_id, str(render(layer_curves(summary), Path(tmp) / PLOT_FILE,
                                                   title=f"control: {out.name}")))
        (Path(tmp) / "control.json").write_text(json.dumps({"metrics": metrics, "dense": {
            "params": dense.params_dense, "flops": dense.flops_dense}}, indent=2))
        client.log_artifact(run_id, str(Path(tmp) / "control.json"))
    if (out / "model").is_dir():
        client.log_artifacts(run_id, str(out / "model"), artifact_path="model")
    status = summary.final.status if summary.final is not None else ""
    client.set_tag(run_id, "adprune.status", status)
    client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")


# --- the comparison ----------------------------------------------------------------------------------

def comparison_text(view: StudyView, number: int) -> list[str]:
    """The trial beside its controls over seeds, as the report shows them (``reports.render``), read back from
    the stores: a Markdown table, then one line per question a control answers."""
    from reports.load import control_inputs, load_study_data, trial_inputs
    from reports.pareto import control_summaries
    from reports.render import CONTROL_HEADERS, control_answers, control_table_rows, md_table

    data = load_study_data(view.stores, view.name)
    trial = next(t for t in trial_inputs(data) if t.number == number)
    summaries = control_summaries(trial, control_inputs(data))
    return [md_table(CONTROL_HEADERS, control_table_rows(summaries, trial.metrics, number)),
            *control_answers(summaries)]
