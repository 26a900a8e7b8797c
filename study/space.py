"""The study config: what is searched, what is fixed, what is optimised; and the pure map from a
trial's suggested params to a trainer ``Config``.

A study file (``configs/study/<dataset>-<model>.yaml``) holds::

    base: ../cifar10-vgg19.yaml     # trainer preset, relative to this file; or an inline trainer mapping
    fixed:                          # dotted trainer keys -> values, applied on top of base
      train.epochs: 30
    space:                          # dotted key -> distribution, suggested in this order
      prune.schedule: {type: categorical, choices: [fixed, saturation, interval]}
      prune.first_frac: {type: float, low: 0.1, high: 0.5}
      prune.density_tol: {type: float, low: 0.005, high: 0.05, log: true, when: {prune.schedule: [saturation]}}
    objectives:                     # exactly three: name (a final metric) and direction
      - {name: val_top1, direction: maximize}
      - {name: flops, direction: minimize}
      - {name: train_flops_cum, direction: minimize}
    sampler: {name: tpe, seed: 0}   # tpe (startup_trials), nsga2 (population_size) or random
    constraints: {max_accuracy_drop: 0.02}   # optional: at most this val_top1 drop vs the baseline
    stopper: {check_at: [0.5], margin: 0.05} # optional: the dominated-trial stopper (study/stopping.py)
    share: {enabled: true, snapshot_gb: 10}  # optional: shared-prefix trials (study/sharing.py), on by default

A study scores its trials on a validation split held out of the training images: ``data.holdout``
defaults to ``STUDY_HOLDOUT`` (0.1) when base and fixed leave it out, and 0 (scoring on the dataset's
evaluation split, the test split) is refused. ``test_top1`` is recorded with every trial and never
read by the search.

Searched keys are trainer keys (``adprune options``; not ``data.*``: a study loads its data once)
or one of three schedule keys that are relative to the run length, so a space survives a change of
``train.epochs`` (E below; fractions round half up):

- ``prune.first_frac`` (0 < f < 1): the first prune comes after epoch ``clamp(round(f * E), 1, E - 1)``;
- ``prune.interval_frac`` (0 < f <= 1): prunes are ``max(1, round(f * E))`` epochs apart;
- ``prune.rounds`` (int >= 1): at most this many prunes.

They map per schedule to trainer keys: ``fixed`` -> ``prune.epochs`` = first, first + interval, ...
(``rounds`` of them, those before epoch E) and ``prune.max_rounds`` = rounds; ``interval`` ->
``prune.warmup`` = first, ``prune.interval``, ``prune.max_rounds``; ``saturation`` -> ``prune.warmup`` =
first (also the least spacing between prunes), ``prune.max_rounds``; ``none`` -> nothing.
``prune.epochs`` is emptied for every schedule but ``fixed``. A key with ``when`` is suggested only
when the earlier categorical keys it names took one of the listed values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adprune_core.config import (
    MAX_SEED,
    SECTIONS,
    Config,
    config_from_dict,
    config_to_dict,
    finite,
    parse_override,
    read_yaml,
)
from adprune_core.errors import ConfigError
from adprune_core.policy import earliest_prune_epoch
from study.samplers import SAMPLERS

FIRST_FRAC, INTERVAL_FRAC, ROUNDS = "prune.first_frac", "prune.interval_frac", "prune.rounds"
SCHEDULE_KEYS = (FIRST_FRAC, INTERVAL_FRAC, ROUNDS)
# A schedule key and the trainer keys it sets may not both be searched.
_SETS = {FIRST_FRAC: ("prune.warmup", "prune.epochs"), INTERVAL_FRAC: ("prune.interval", "prune.epochs"),
         ROUNDS: ("prune.max_rounds",)}
OBJECTIVE_METRICS = ("val_top1", "params", "flops", "train_flops_cum")
DIRECTIONS = ("maximize", "minimize")
STUDY_SECTIONS = ("sampler", "constraints", "stopper", "share")
STUDY_KEYS = ("base", "fixed", "space", "objectives", *STUDY_SECTIONS)
DIM_TYPES = ("categorical", "int", "float")
DEFAULT_MODELS = {"synthetic": "vgg11"}  # every other dataset: vgg19
STUDY_HOLDOUT = 0.1  # data.holdout of a study that does not set it
SPLIT_KEYS = ("name", "holdout", "seed", "train_size")  # data keys that decide which images score a trial


@dataclass(frozen=True)
class Dimension:
    """One searched key and its distribution; ``when`` = ((earlier key, allowed values), ...)."""

    key: str
    type: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(key) in allowed for key, allowed in self.when)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    direction: str


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int = 0
    startup_trials: int = 10  # tpe: random trials before the model takes over
    population_size: int = 50  # nsga2


@dataclass(frozen=True)
class StopperSpec:
    check_at: tuple[float, ...] = (0.5,)  # fractions of train.epochs
    margin: float = 0.05  # relative: see study/pareto.py dominates_by_margin


@dataclass(frozen=True)
class ShareSpec:
    enabled: bool = True  # trials fork from epoch snapshots of a shared prefix (study/sharing.py); --no-share: off
    snapshot_gb: float = 10.0  # the snapshot store's size limit in GB: a snapshot that would pass it is not written


@dataclass(frozen=True)
class StudyConfig:
    trainer: Config  # base + fixed: every trial starts from this
    space: tuple[Dimension, ...]
    objectives: tuple[ObjectiveSpec, ...]
    sampler: SamplerSpec = SamplerSpec()
    max_accuracy_drop: float | None = None
    stopper: StopperSpec | None = None
    share: ShareSpec = ShareSpec()
    source: str = "<inline>"
    spec: str = field(default="{}", compare=False, repr=False)  # JSON: the study as plain data, base resolved

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(o.direction for o in self.objectives)

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.space)


# --- params -> trainer config (pure) -----------------------------------------------------------

def trial_config(params: Mapping[str, Any], base: Config) -> Config:
    """The trainer config of a trial: ``base`` with the suggested ``params`` (dotted keys) applied and
    the schedule keys (module docstring) turned into trainer keys; validated. ``base`` is not mutated."""
    raw = config_to_dict(base)
    for key, value in params.items():
        if key not in SCHEDULE_KEYS:
            section, name = key.split(".", 1)
            raw[section][name] = value
    p, epochs = raw["prune"], raw["train"]["epochs"]
    derived = {k: params[k] for k in SCHEDULE_KEYS if k in params}
    if p["schedule"] != "fixed":
        p["epochs"] = []  # only the fixed schedule reads them; emptied so they never outlive a shorter run
    if derived and p["schedule"] != "none":
        if epochs < 2:
            raise ConfigError(f"train.epochs: {epochs} leaves no epoch to prune after; a pruning study "
                              "needs train.epochs >= 2")
        default_first = p["epochs"][0] if p["schedule"] == "fixed" and p["epochs"] else p["warmup"]
        first = _epoch_at(derived[FIRST_FRAC], epochs) if FIRST_FRAC in derived else default_first
        interval = _span(derived[INTERVAL_FRAC], epochs) if INTERVAL_FRAC in derived else p["interval"]
        rounds = _rounds(derived[ROUNDS]) if ROUNDS in derived else p["max_rounds"]
        if p["schedule"] == "fixed":
            p["epochs"] = [e for e in (first + k * interval for k in range(rounds)) if e < epochs] or [first]
        else:
            p["warmup"] = first
        if p["schedule"] == "interval":
            p["interval"] = interval
        p["max_rounds"] = rounds
    if p["schedule"] == "saturation" and "prune.patience" in params and epochs >= 3:
        # saturation needs patience + 1 epochs of history before it can fire, and never fires after the
        # last epoch: a searched patience is capped at E - 2 so that the rule can fire at all
        p["patience"] = min(p["patience"], epochs - 2)
    return config_from_dict(raw)


def baseline_config(base: Config) -> Config:
    """The dense baseline: ``base`` trained the same way, never pruned."""
    return trial_config({"prune.schedule": "none"}, base)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def epoch_at(frac: float, epochs: int) -> int:
    """The epoch (1-based) a fraction of training falls on: rounded half up, never the first nor the last."""
    return min(epochs - 1, max(1, _round_half_up(frac * epochs)))


def _epoch_at(frac: Any, epochs: int) -> int:
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1:
        raise ConfigError(f"{FIRST_FRAC}: {frac!r} is not a fraction of training strictly between 0 and 1; "
                          "use e.g. 0.3 (first prune after 30% of the epochs)")
    return epoch_at(frac, epochs)


def _span(frac: Any, epochs: int) -> int:
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac <= 1:
        raise ConfigError(f"{INTERVAL_FRAC}: {frac!r} is not a fraction of training in (0, 1]; "
                          "use e.g. 0.2 (prunes 20% of the epochs apart)")
    return max(1, _round_half_up(frac * epochs))


def _rounds(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{ROUNDS}: {value!r} is not a whole number of prunes >= 1; use e.g. 3")
    return value


def suggest(trial: Any, space: Iterable[Dimension]) -> dict[str, Any]:
    """Ask an Optuna ``trial`` for every active dimension, in order; returns key -> value."""
    params: dict[str, Any] = {}
    for d in space:
        if not d.active(params):
            continue
        if d.type == "categorical":
            params[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif d.type == "int":
            params[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            params[d.key] = trial.suggest_float(d.key, d.low, d.high, step=d.step, log=d.log)
    return params


# --- loading and validation --------------------------------------------------------------------

def find_study_file(dataset: str, model: str | None = None) -> Path:
    """``configs/study/<dataset>-<model>.yaml`` under the current folder or the project root."""
    model = model or DEFAULT_MODELS.get(dataset, "vgg19")
    name = f"{dataset}-{model}.yaml"
    search = [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in search:
        path = root / "configs" / "study" / name
        if path.is_file():
            return path
    known = sorted({p.stem for root in search for p in (root / "configs" / "study").glob("*.yaml")})
    raise ConfigError(f"no study preset for dataset {dataset!r} and model {model!r} (configs/study/{name}); "
                      f"known: {', '.join(known) or 'none'}; or pass --config FILE")


def load_study_config(path: str | Path, overrides: Iterable[str] = (),
                      values: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read a study file, apply overrides, validate everything, freeze.

    ``overrides`` are ``KEY=VALUE`` strings (YAML values) and ``values`` key -> value; a key in
    ``sampler``, ``constraints`` or ``stopper`` changes that study section, any other dotted key is a
    trainer key added to ``fixed``. Raises ``ConfigError`` (one line: file, key, value, rule, fix).
    """
    path = Path(path)
    raw = _apply_overrides(read_yaml(path), overrides, values, str(path))
    try:
        return study_config_from_dict(raw, base_dir=path.parent, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def study_config_from_spec(spec: Mapping[str, Any], overrides: Iterable[str] = (),
                           values: Mapping[str, Any] | None = None, source: str = "<stored>") -> StudyConfig:
    """A study as stored with it (``StudyConfig.spec``, e.g. in the Optuna study a worker joins), with
    overrides applied as in ``load_study_config`` (``data.root=...`` for this machine's copy of the data)."""
    raw = _apply_overrides(json.loads(json.dumps(spec)), overrides, values, source)
    if isinstance(raw, dict) and isinstance(raw.get("space"), dict):
        raw["space"] = conditions_first(raw["space"])
    try:
        return study_config_from_dict(raw, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def conditions_first(space: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` reordered so that every key comes after the keys its ``when`` names, otherwise in its
    order (a stable topological order). A study stored by an older version kept its space keys sorted
    alphabetically, which put ``prune.density_tol`` (``when: prune.schedule``) before its condition's key;
    a key whose condition names no key of the space keeps its place (``_when`` then says what is wrong)."""
    keys = list(space)
    ordered: dict[str, Any] = {}

    def place(key: str, visiting: frozenset[str]) -> None:
        if key in ordered or key in visiting:
            return
        when = space[key].get("when") if isinstance(space[key], Mapping) else None
        for ref in (when if isinstance(when, Mapping) else {}):
            if ref in space:
                place(ref, visiting | {key})
        ordered[key] = space[key]

    for key in keys:
        place(key, frozenset())
    return ordered


def _apply_overrides(raw: Any, overrides: Iterable[str], values: Mapping[str, Any] | None, where: str) -> Any:
    """``KEY=VALUE`` strings and ``values``: a study-section key changes that section, any other dotted key
    is a trainer key added to ``fixed``."""
    pairs = [(".".join(k), v) for k, v in map(parse_override, overrides)] + list((values or {}).items())
    if pairs and not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of study keys, got {type(raw).__name__}")
    for key, value in pairs:
        section, _, name = key.partition(".")
        if section in STUDY_SECTIONS:
            target = raw.get(section) or {}
            if not isinstance(target, dict):
                raise ConfigError(f"{where}: {section}: expected a mapping, got {target!r}")
            raw[section] = {**target, name: value}
        else:
            raw["fixed"] = {**(raw.get("fixed") or {}), key: value}
    return raw


def study_config_from_dict(raw: Any, base_dir: Path = Path("."), source: str = "<inline>") -> StudyConfig:
    """Build and validate a StudyConfig from plain data; ``base`` paths are relative to ``base_dir``."""
    raw = _mapping(raw, "study file", STUDY_KEYS)
    for required in ("base", "space", "objectives"):
        if required not in raw:
            raise ConfigError(f"{required}: missing; a study file needs {', '.join(('base', 'space', 'objectives'))}")
    trainer = _trainer_base(raw["base"], _mapping(raw.get("fixed"), "fixed"), base_dir)
    space = _space(_mapping(raw["space"], "space"))
    cfg = StudyConfig(trainer=trainer, space=space, objectives=_objectives(raw["objectives"]),
                      sampler=_section(SamplerSpec, "sampler", raw.get("sampler")),
                      max_accuracy_drop=_constraints(raw.get("constraints")),
                      stopper=_stopper(raw.get("stopper")), share=_share(raw.get("share")), source=source,
                      spec=json.dumps({**{k: v for k, v in raw.items() if k not in ("base", "fixed")},
                                       "base": config_to_dict(trainer)}, default=str))  # space in its order
    SAMPLERS.get(cfg.sampler.name)
    _check_samples(cfg)
    return cfg


def _mapping(raw: Any, where: str, known: Iterable[str] | None = None) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    if known is not None:
        unknown = sorted(set(map(str, raw)) - set(known))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known: {', '.join(known)}")
    return raw


def _split_key(key: Any, where: str) -> tuple[str, str]:
    section, _, name = str(key).partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{where}: {key!r} is not a dotted trainer key (section.name, sections: "
                          f"{', '.join(SECTIONS)}), e.g. train.epochs")
    return section, name


def _trainer_base(base: Any, fixed: dict, base_dir: Path) -> Config:
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else base_dir / base
        raw = read_yaml(base_path)
    elif isinstance(base, dict):
        raw = base
    else:
        raise ConfigError(f"base: expected a trainer preset path (relative to the study file) or a "
                          f"mapping, got {base!r}")
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in fixed.items():
        section, name = _split_key(key, "fixed")
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"base: section {section} must be a mapping, got {target!r}")
        target[name] = value
    if isinstance(merged.setdefault("data", {}), dict):
        merged["data"].setdefault("holdout", STUDY_HOLDOUT)
    try:
        cfg = config_from_dict(merged)
    except ConfigError as exc:
        raise ConfigError(f"base + fixed: {exc}") from None
    if cfg.data.holdout == 0:
        raise ConfigError("data.holdout: 0 would score every trial on the dataset's evaluation split, the test split "
                          "kept for test_top1; a study needs a held-out validation split: leave data.holdout out "
                          f"({STUDY_HOLDOUT}) or set a fraction in (0, 0.5]")
    return cfg


def split_change(stored_spec: Mapping[str, Any] | None, trainer: Config) -> str | None:
    """How ``trainer``'s validation split differs from the one a study's stored spec (``StudyConfig.spec``)
    scored its trials on (``SPLIT_KEYS``; a spec from before ``data.holdout`` existed had none: 0), or None."""
    if not stored_spec:
        return None
    stored = (stored_spec.get("base") or {}).get("data") or {}
    mine = config_to_dict(trainer)["data"]
    default = {"holdout": 0.0, "seed": 0, "train_size": 0}
    changed = [f"data.{k} {stored.get(k, default.get(k))!r} -> {mine[k]!r}" for k in SPLIT_KEYS
               if stored.get(k, default.get(k)) != mine[k]]
    return ", ".join(changed) or None


def _space(raw: dict) -> tuple[Dimension, ...]:
    if not raw:
        raise ConfigError("space: empty; search at least one key, e.g. prune.schedule")
    dims: list[Dimension] = []
    for key, spec in raw.items():
        key = str(key)
        section, name = _split_key(key, f"space: {key}")
        if section == "data":
            raise ConfigError(f"space: {key} cannot be searched (a study loads its dataset once); "
                              "set it under fixed instead")
        if key not in SCHEDULE_KEYS and name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ConfigError(f"space: {key} is not a trainer key; search trainer keys (adprune options) or "
                              f"{', '.join(SCHEDULE_KEYS)}")
        dims.append(_dimension(key, _mapping(spec, f"space: {key}"), dims))
    keys = {d.key for d in dims}
    for derived, targets in _SETS.items():
        clash = [t for t in targets if t in keys]
        if derived in keys and clash:
            raise ConfigError(f"space: {derived} and {clash[0]} both set {clash[0]}; search only one of them")
    return tuple(dims)


def _dimension(key: str, spec: dict, earlier: list[Dimension]) -> Dimension:
    where = f"space: {key}"
    kind = spec.get("type")
    if kind not in DIM_TYPES:
        raise ConfigError(f"{where}: type {kind!r} is not allowed; choose one of {', '.join(DIM_TYPES)}")
    allowed = {"categorical": ("type", "choices", "when"),
               "int": ("type", "low", "high", "step", "log", "when"),
               "float": ("type", "low", "high", "step", "log", "when")}[kind]
    _mapping(spec, where, allowed)
    when = _when(where, spec.get("when"), earlier)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad or len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices {choices!r} must be distinct scalars (numbers, strings, bools)")
        return Dimension(key, kind, choices=tuple(choices), when=when)
    number = int if kind == "int" else (int, float)
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not isinstance(v, number) or isinstance(v, bool):
            raise ConfigError(f"{where}: {name} must be {'an int' if kind == 'int' else 'a number'}, got {v!r}")
        finite(f"{where}: {name}", v)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}; swap them")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step {step} must be > 0")
    if log and (low <= 0 or (step is not None and step != 1)):
        raise ConfigError(f"{where}: log needs low > 0 and no step (got low={low}, step={step})")
    return Dimension(key, kind, low=low, high=high, step=step, log=log, when=when)


def _when(where: str, raw: Any, earlier: list[Dimension]) -> tuple[tuple[str, tuple], ...]:
    conditions = []
    for key, values in _mapping(raw, f"{where}: when").items():
        values = values if isinstance(values, list) else [values]
        ref = next((d for d in earlier if d.key == key and d.type == "categorical"), None)
        if ref is None:
            raise ConfigError(f"{where}: when names {key!r}, which is not a categorical key listed before it "
                              "in space; put the condition's key first")
        outside = [v for v in values if v not in ref.choices]
        if outside:
            raise ConfigError(f"{where}: when {key}: {outside[0]!r} is not one of its choices "
                              f"{list(ref.choices)}")
        conditions.append((str(key), tuple(values)))
    return tuple(conditions)


def _objectives(raw: Any) -> tuple[ObjectiveSpec, ...]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise ConfigError(f"objectives: expected a list of exactly three {{name, direction}}, got {raw!r}; "
                          "e.g. val_top1 maximize, flops minimize, train_flops_cum minimize")
    specs = [_section(ObjectiveSpec, f"objectives[{i}]", item, required=("name", "direction"))
             for i, item in enumerate(raw)]
    for i, o in enumerate(specs):
        if o.name not in OBJECTIVE_METRICS:
            raise ConfigError(f"objectives[{i}].name: {o.name!r} is not allowed; choose one of "
                              f"{', '.join(OBJECTIVE_METRICS)}")
        if o.direction not in DIRECTIONS:
            raise ConfigError(f"objectives[{i}].direction: {o.direction!r} is not allowed; choose maximize "
                              "or minimize")
    names = [o.name for o in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives: {names} names one metric twice; name each objective once")
    return tuple(specs)


def _constraints(raw: Any) -> float | None:
    raw = _mapping(raw, "constraints", ("max_accuracy_drop",))
    drop = raw.get("max_accuracy_drop")
    if drop is None:
        return None
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
        raise ConfigError(f"constraints.max_accuracy_drop: {drop!r} must be a fraction in [0, 1] "
                          "(0.02 = two points of val_top1 below the baseline)")
    return float(drop)


def _stopper(raw: Any) -> StopperSpec | None:
    if raw is None or raw is False:
        return None
    spec = _section(StopperSpec, "stopper", raw)
    bad = [f for f in spec.check_at if not 0 < f < 1]
    if not spec.check_at or bad:
        raise ConfigError(f"stopper.check_at: {list(spec.check_at)} must be fractions of training strictly "
                          "between 0 and 1, e.g. [0.5]")
    if spec.margin < 0:
        raise ConfigError(f"stopper.margin: {spec.margin} must be >= 0 (0.05 = better by 5%)")
    return spec


def _share(raw: Any) -> ShareSpec:
    raw = _mapping(raw, "share", ("enabled", "snapshot_gb"))
    enabled, gb = raw.get("enabled", ShareSpec.enabled), raw.get("snapshot_gb", ShareSpec.snapshot_gb)
    if not isinstance(enabled, bool):
        raise ConfigError(f"share.enabled: {enabled!r} must be true or false (false, or --no-share: every trial "
                          "trains from scratch)")
    if not isinstance(gb, (int, float)) or isinstance(gb, bool) or not gb >= 0:
        raise ConfigError(f"share.snapshot_gb: {gb!r} must be a number of GB >= 0 (0: write no snapshots), e.g. 10")
    return ShareSpec(enabled, float(gb))


def _section(cls: type, where: str, raw: Any, required: tuple[str, ...] = ()) -> Any:
    """A small frozen dataclass from a mapping: known keys, types checked (ints widen to floats)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw = _mapping(raw, where, fields)
    missing = [r for r in required if r not in raw]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is missing")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        tp = hints[name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        items = value if inner is not None and isinstance(value, list) else [value]
        want = inner or tp
        ok = all(not isinstance(v, bool) and (isinstance(v, want) or (want is float and isinstance(v, int)))
                 for v in items) and (inner is None or isinstance(value, list))
        if not ok:
            kind = f"a list of {want.__name__}" if inner else want.__name__
            raise ConfigError(f"{where}.{name}: expected {kind}, got {value!r}")
        for v in items:
            finite(f"{where}.{name}", v)
        least = 2 if name == "population_size" else 0  # NSGA-II breeds pairs of parents
        if want is int and any(v < least for v in items):
            raise ConfigError(f"{where}.{name}: {value!r} is below the minimum {least}; use {least} or more")
        if name == "seed" and value > MAX_SEED:
            raise ConfigError(f"{where}.seed: {value} is above the maximum {MAX_SEED} (samplers take 32-bit seeds); "
                              f"use a seed from 0 to {MAX_SEED}")
        values[name] = tuple(float(v) for v in items) if inner else (float(value) if want is float else value)
    return cls(**values)


def _check_samples(cfg: StudyConfig) -> None:
    """Every extreme of every dimension must give a valid trainer config (fail at load, not at trial 7)."""
    def values(d: Dimension) -> tuple:  # as Optuna would suggest them: ints for int, floats for float
        return d.choices if d.type == "categorical" else tuple(map(int if d.type == "int" else float,
                                                                   (d.low, d.high)))

    first = {d.key: values(d)[0] for d in cfg.space}
    samples = [first] + [{**first, d.key: v} for d in cfg.space for v in values(d)]
    baseline_config(cfg.trainer)
    for params in samples:
        changed = next((f"{k}={v!r}" for k, v in params.items() if first.get(k) != v), None)
        where = changed or "the first choice / low end of every key"
        try:
            trainer = trial_config(params, cfg.trainer)
        except ConfigError as exc:
            raise ConfigError(f"space: {where} gives no valid trainer config: {exc}") from None
        epochs = trainer.train.epochs
        if trainer.prune.schedule != "none" and earliest_prune_epoch(trainer.prune, epochs) is None:
            raise ConfigError(f"space: {where} gives a trial that cannot prune within train.epochs={epochs} "
                              f"({never_prunes_why(trainer.prune, epochs)}); use more epochs (EPOCHS=) or take "
                              "that value out of the space")


def never_prunes_why(p: Any, epochs: int) -> str:
    """Why a ``prune`` config (``PruneConfig``) can never prune in a run of ``epochs``, for messages."""
    if p.max_rounds < 1:
        return "prune.max_rounds is 0"
    if p.schedule == "saturation":
        return (f"saturation first prunes after epoch max(prune.warmup, prune.patience + 1) = "
                f"{max(p.warmup, p.patience + 1)}, and no prune comes after the last epoch")
    if p.schedule == "interval":
        return f"the first interval prune comes after epoch {p.warmup or p.interval}, the last epoch or later"
    return f"prune.epochs {list(p.epochs)} holds no epoch before the last"


def prune_windows(cfg: StudyConfig) -> dict[str, tuple[int, int]]:
    """Schedule -> (lowest, highest) epoch after which a trial of the space can first prune, over the
    space's ranges (the earliest prune grows with ``prune.first_frac`` and ``prune.patience``, so the two
    ends of every numeric range give the two ends of the window). Schedules that never prune are left out."""
    dims = {d.key: d for d in cfg.space}
    schedule = dims.get("prune.schedule")
    schedules = schedule.choices if schedule is not None else (cfg.trainer.prune.schedule,)
    out: dict[str, tuple[int, int]] = {}
    for name in schedules:
        ends = []
        for end in ("low", "high"):
            params = {d.key: (d.choices[0] if d.type == "categorical" else
                              (int if d.type == "int" else float)(getattr(d, end))) for d in cfg.space}
            params["prune.schedule"] = name
            trainer = trial_config(params, cfg.trainer)
            first = earliest_prune_epoch(trainer.prune, trainer.train.epochs)
            if first is not None:
                ends.append(first)
        if ends:
            out[str(name)] = (min(ends), max(ends))
    return out


def prune_window_note(cfg: StudyConfig, few: int = 3) -> str | None:
    """A line for the study's start when some schedule leaves fewer than ``few`` epochs after its
    latest possible first prune (or the run is short), else None."""
    epochs = cfg.trainer.train.epochs
    windows = prune_windows(cfg)
    if not windows or all(epochs - hi >= few for _, hi in windows.values()):
        return None
    def span(a: int, b: int) -> str:
        return f"{a}" if a == b else f"{a}-{b}"

    parts = [f"{name} after epoch {span(lo, hi)} ({span(epochs - hi, epochs - lo)} epoch(s) left to recover)"
             for name, (lo, hi) in windows.items()]
    return (f"note: {epochs} epochs per trial; the first prune comes at the earliest: " + "; ".join(parts)
            + (" (saturation only once densities settle)" if "saturation" in windows else ""))


# The least and greatest value of each schedule key (the trainer keys' come from their config fields).
_SCHEDULE_LIMITS = {FIRST_FRAC: (0.0, 1.0), INTERVAL_FRAC: (0.0, 1.0), ROUNDS: (1, None)}


def key_limits(keys: Iterable[str]) -> dict[str, tuple[float | None, float | None]]:
    """Searched key -> (least, greatest) value it allows, None where unbounded: ``prune.patience`` ->
    (1, None), ``prune.first_frac`` -> (0, 1). Keys that are neither trainer nor schedule keys are left out."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for key in keys:
        if key in _SCHEDULE_LIMITS:
            out[key] = _SCHEDULE_LIMITS[key]
            continue
        section, _, name = key.partition(".")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])} if section in SECTIONS else {}
        if name in fields:
            meta = fields[name].metadata
            out[key] = (meta.get("lo"), meta.get("hi"))
    return out
