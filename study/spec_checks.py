"""Validation of a study file's sections: plain data (as read from YAML) -> the typed values of
``study/spec.py``, or a one-line ``ConfigError`` naming the key, the value, the rule and the fix.

Only what the trainer config does not know is checked here: the search space's distributions, the
objectives, and the sampler / stopper / constraints / share sections. Trainer keys and values are the
trainer's to validate (``adprune_core.config``): ``check_samples`` builds the trainer config of every
extreme of the space, so a searched value the trainer refuses fails at load with the trainer's message.
Numbers go through the trainer's ``finite``; the ranges of section fields are their ``lo``/``hi``
metadata, as in the trainer config.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from adprune_core.config import SECTIONS, finite
from adprune_core.errors import ConfigError
from adprune_core.policy import earliest_prune_epoch
from study.prune_window import never_prunes_why
from study.spec import (
    DIM_TYPES,
    DIRECTIONS,
    OBJECTIVE_METRICS,
    Dimension,
    ObjectiveSpec,
    ShareSpec,
    StopperSpec,
    StudyConfig,
)
from study.trial_params import SCHEDULE_KEY_SETS, SCHEDULE_KEYS, baseline_config, trial_config


def mapping(raw: Any, where: str, known: Iterable[str] | None = None) -> dict:
    """``raw`` if it is a mapping (None: empty) whose keys are all in ``known`` (when given)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    if known is not None:
        unknown = sorted(set(map(str, raw)) - set(known))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known: {', '.join(known)}")
    return raw


def split_key(key: Any, where: str) -> tuple[str, str]:
    """A dotted trainer key's (section, name); the name is not checked against the section's fields."""
    section, _, name = str(key).partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{where}: {key!r} is not a dotted trainer key (section.name, sections: "
                          f"{', '.join(SECTIONS)}), e.g. train.epochs")
    return section, name


# --- the search space ------------------------------------------------------------------------------

def space_from_dict(raw: dict) -> tuple[Dimension, ...]:
    """The ``space`` section: dotted key -> distribution, in the file's order."""
    if not raw:
        raise ConfigError("space: empty; search at least one key, e.g. prune.schedule")
    dims: list[Dimension] = []
    for key, spec in raw.items():
        key = str(key)
        section, name = split_key(key, f"space: {key}")
        if section == "data":
            raise ConfigError(f"space: {key} cannot be searched (a study loads its dataset once); "
                              "set it under fixed instead")
        if key not in SCHEDULE_KEYS and name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ConfigError(f"space: {key} is not a trainer key; search trainer keys (adprune options) or "
                              f"{', '.join(SCHEDULE_KEYS)}")
        dims.append(_dimension(key, mapping(spec, f"space: {key}"), dims))
    keys = {d.key for d in dims}
    for derived, targets in SCHEDULE_KEY_SETS.items():
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
    mapping(spec, where, allowed)
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
    for key, values in mapping(raw, f"{where}: when").items():
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


def check_samples(cfg: StudyConfig) -> None:
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


# --- the other sections ----------------------------------------------------------------------------

def objectives_from_list(raw: Any) -> tuple[ObjectiveSpec, ...]:
    """The ``objectives`` section: exactly three distinct metrics, each with a direction."""
    if not isinstance(raw, list) or len(raw) != 3:
        raise ConfigError(f"objectives: expected a list of exactly three {{name, direction}}, got {raw!r}; "
                          "e.g. val_top1 maximize, flops minimize, train_flops_cum minimize")
    specs = [section_from_dict(ObjectiveSpec, f"objectives[{i}]", item, required=("name", "direction"))
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


def max_accuracy_drop_from(raw: Any) -> float | None:
    """The ``constraints`` section's ``max_accuracy_drop`` (a fraction in [0, 1]), or None."""
    raw = mapping(raw, "constraints", ("max_accuracy_drop",))
    drop = raw.get("max_accuracy_drop")
    if drop is None:
        return None
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
        raise ConfigError(f"constraints.max_accuracy_drop: {drop!r} must be a fraction in [0, 1] "
                          "(0.02 = two points of val_top1 below the baseline)")
    return float(drop)


def stopper_from_dict(raw: Any) -> StopperSpec | None:
    """The ``stopper`` section; None (or false): no stopper."""
    if raw is None or raw is False:
        return None
    spec = section_from_dict(StopperSpec, "stopper", raw)
    bad = [f for f in spec.check_at if not 0 < f < 1]
    if not spec.check_at or bad:
        raise ConfigError(f"stopper.check_at: {list(spec.check_at)} must be fractions of training strictly "
                          "between 0 and 1, e.g. [0.5]")
    if spec.margin < 0:
        raise ConfigError(f"stopper.margin: {spec.margin} must be >= 0 (0.05 = better by 5%)")
    return spec


def share_from_dict(raw: Any) -> ShareSpec:
    """The ``share`` section; missing keys take ``ShareSpec``'s defaults."""
    raw = mapping(raw, "share", ("enabled", "snapshot_gb"))
    enabled, gb = raw.get("enabled", ShareSpec.enabled), raw.get("snapshot_gb", ShareSpec.snapshot_gb)
    if not isinstance(enabled, bool):
        raise ConfigError(f"share.enabled: {enabled!r} must be true or false (false, or --no-share: every trial "
                          "trains from scratch)")
    if not isinstance(gb, (int, float)) or isinstance(gb, bool) or not gb >= 0:
        raise ConfigError(f"share.snapshot_gb: {gb!r} must be a number of GB >= 0 (0: write no snapshots), e.g. 10")
    return ShareSpec(enabled, float(gb))


def section_from_dict(cls: type, where: str, raw: Any, required: tuple[str, ...] = ()) -> Any:
    """A small frozen dataclass from a mapping: known keys, types checked (ints widen to floats), every
    number finite, and within its field's ``lo``/``hi`` metadata."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw = mapping(raw, where, fields)
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
        _check_limits(f"{where}.{name}", items, fields[name].metadata)
        values[name] = tuple(float(v) for v in items) if inner else (float(value) if want is float else value)
    return cls(**values)


def _check_limits(key: str, items: list, meta: typing.Mapping[str, Any]) -> None:
    """Each of ``items`` within the field's ``lo``/``hi``; the field's ``why`` (if any) is the reason given."""
    lo, hi = meta.get("lo"), meta.get("hi")
    reason = f" ({meta['why']})" if meta.get("why") else ""
    name = key.rpartition(".")[2]
    for v in items:
        if lo is not None and v < lo:
            raise ConfigError(f"{key}: {v!r} is below the minimum {lo}; use {lo} or more{reason}")
        if hi is not None and v > hi:
            fix = f"use a {name} from {lo} to {hi}" if lo is not None else f"use {hi} or less"
            raise ConfigError(f"{key}: {v!r} is above the maximum {hi}{reason}; {fix}")
