"""The run configuration: loaded from YAML and ``--set`` overrides, validated once, frozen.

YAML files only store the typed, frozen dataclasses of ``adprune_core.sections`` (re-exported here:
``Config``, ``DataConfig``, ...). ``load_config`` reads a preset, applies dotted ``--set`` overrides
(``prune.epochs=[3,6]``), checks every key, type and range, the rules between fields, and the names
chosen through registries (``data.name`` against ``data.DATASETS``, ``model.name`` against the models),
and returns a frozen ``Config``. Any violation raises ``ConfigError`` with a one-line message naming
the key, the value, the rule and the fix.

Epochs are 1-based everywhere: ``prune.epochs=[3]`` prunes right after the
third epoch has finished (densities of epoch 3 decide the new widths).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from adprune_core.data import DATASETS
from adprune_core.errors import ConfigError
from adprune_core.models import check_model_name
from adprune_core.sections import (
    CACHE_DIR_ENV,
    DATA_ROOT_ENV,
    MAX_CHANNELS,
    MAX_SEED,
    SECTIONS,
    Config,
    DataConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
)

# --- loading ---------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError; ints widen to floats, nothing else."""
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # a single number for a list field: prune.epochs=5
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}; "
                              f"write e.g. {key}=[1,2]")
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return finite(key, float(value))
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string; users write it anyway
            return finite(key, float(value))
        except ValueError:
            pass
    if tp is float and isinstance(value, float):
        return finite(key, value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def finite(key: str, value: float) -> float:
    """``value`` if it is a finite number (any int is); else a ``ConfigError``. Every float read from a
    config, a ``--set`` or a study file passes here: NaN fails every ``<``/``>`` range check, so it would
    slip through them, and ``1e309`` reads as infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number (NaN and infinities, 1e309 included, are "
                          "refused); give an ordinary number")
    return value


def _check_range(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if choices is not None and v not in choices:
            raise ConfigError(f"{key}: {v!r} is not allowed; choose one of {', '.join(choices)}")
        if lo is not None and v < lo:
            raise ConfigError(f"{key}: {v!r} is below the minimum {lo}; use a value >= {lo}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key}: {v!r} is above the maximum {hi}; use a value <= {hi}")


def _build_section(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {section}.{unknown[0]}; known keys in {section}: "
                          f"{', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        choices = fields[name].metadata.get("choices") or ()
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads on/off (yes/no, true/false) as booleans
        coerced = _coerce(key, value, hints[name])
        _check_range(key, coerced, fields[name].metadata)
        values[name] = coerced
    return cls(**values)


def config_from_dict(raw: Any) -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    cfg = Config(**{name: _build_section(cls, name, raw.get(name)) for name, cls in SECTIONS.items()})
    _check_cross_field(cfg)
    return cfg


def _check_cross_field(cfg: Config) -> None:
    p = cfg.prune
    # prune.epochs acts only under the fixed schedule: under another one (prune.schedule=none on a preset
    # with prune.epochs) it is left as given and not checked against train.epochs, so it blocks nothing.
    if p.schedule == "fixed":
        if not p.epochs:
            raise ConfigError("prune.epochs: the fixed schedule needs at least one epoch; "
                              "set e.g. prune.epochs=[10,20] or choose another prune.schedule")
        bad = [e for e in p.epochs if not 1 <= e < cfg.train.epochs]
        if bad:
            raise ConfigError(f"prune.epochs: epoch {bad[0]} is outside 1..{cfg.train.epochs - 1} (a prune "
                              f"needs at least one epoch after it, and train.epochs={cfg.train.epochs}); "
                              "use earlier epochs or more train.epochs")
        if sorted(set(p.epochs)) != list(p.epochs):
            raise ConfigError(f"prune.epochs: {list(p.epochs)} must be strictly increasing; "
                              "list each epoch once, in order")
    if any(not 0 < m < 1 for m in cfg.train.lr_milestones):
        raise ConfigError(f"train.lr_milestones: {list(cfg.train.lr_milestones)} must be fractions "
                          "of training strictly between 0 and 1, e.g. [0.5,0.75]")
    widest = max(cfg.model.widths, default=0) * cfg.model.width_mult
    if widest > MAX_CHANNELS:
        raise ConfigError(f"model.widths x model.width_mult: the widest layer would have {widest:.0f} channels, "
                          f"above the maximum {MAX_CHANNELS}; use smaller model.widths or model.width_mult")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"train.device: {dev!r} is not a device; use auto, cpu, cuda or cuda:N")
    # Names chosen through registries are checked here, at load, so a typo fails before any work.
    DATASETS.get(cfg.data.name)
    check_model_name(cfg.model.name)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=VALUE`` into its key path and a YAML-parsed value (``[3,6]`` is a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=10")
    key, _, raw_value = text.partition("=")
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text!r}: keys are section.name, e.g. prune.schedule; "
                          f"sections: {', '.join(SECTIONS)}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return path, value


def merge_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of nested ``raw`` with each ``section.key=value`` override applied."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        (section, name), value = parse_override(text)
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {target!r}")
        target[name] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file, "
                          "e.g. configs/smoke.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); "
                          "make it readable (chmod u+r) or pass another file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML preset (or the defaults), apply ``--set`` overrides, validate, freeze."""
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(merge_overrides(raw, overrides))


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The resolved config as nested plain data (lists for tuples), ready for JSON or YAML."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()}
            for name in SECTIONS}


def describe_options() -> str:
    """Every key with its default and meaning, for ``adprune train --help-config`` and the docs."""
    lines = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = list(default)
            lines.append(f"{section}.{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "PruneConfig", "load_config",
           "config_from_dict", "config_to_dict", "merge_overrides", "parse_override", "read_yaml",
           "describe_options", "finite", "CACHE_DIR_ENV", "DATA_ROOT_ENV", "MAX_CHANNELS", "MAX_SEED", "SECTIONS"]
