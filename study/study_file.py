"""Reading a study: a preset by dataset and model, a study file, or the spec stored with a study, with
overrides applied -> a validated, frozen ``StudyConfig`` (``study/spec.py``).

The trainer part (``base`` + ``fixed``) is validated by the trainer config itself
(``adprune_core.config.config_from_dict``), the study sections by ``study/spec_checks.py``; every error is
one ``ConfigError`` line naming the file, the key, the value, the rule and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adprune_core.config import Config, config_from_dict, config_to_dict, parse_override, read_yaml
from adprune_core.errors import ConfigError
from study.samplers import SAMPLERS
from study.spec import DEFAULT_MODELS, STUDY_HOLDOUT, STUDY_KEYS, STUDY_SECTIONS, SamplerSpec, StudyConfig
from study.spec_checks import (
    check_samples,
    mapping,
    max_accuracy_drop_from,
    objectives_from_list,
    section_from_dict,
    share_from_dict,
    space_from_dict,
    split_key,
    stopper_from_dict,
)


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
    a key whose condition names no key of the space keeps its place (validation then says what is wrong)."""
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
    raw = mapping(raw, "study file", STUDY_KEYS)
    for required in ("base", "space", "objectives"):
        if required not in raw:
            raise ConfigError(f"{required}: missing; a study file needs {', '.join(('base', 'space', 'objectives'))}")
    trainer = _trainer_base(raw["base"], mapping(raw.get("fixed"), "fixed"), base_dir)
    space = space_from_dict(mapping(raw["space"], "space"))
    cfg = StudyConfig(trainer=trainer, space=space, objectives=objectives_from_list(raw["objectives"]),
                      sampler=section_from_dict(SamplerSpec, "sampler", raw.get("sampler")),
                      max_accuracy_drop=max_accuracy_drop_from(raw.get("constraints")),
                      stopper=stopper_from_dict(raw.get("stopper")), share=share_from_dict(raw.get("share")),
                      source=source,
                      spec=json.dumps({**{k: v for k, v in raw.items() if k not in ("base", "fixed")},
                                       "base": config_to_dict(trainer)}, default=str))  # space in its order
    SAMPLERS.get(cfg.sampler.name)
    check_samples(cfg)
    return cfg


def _trainer_base(base: Any, fixed: dict, base_dir: Path) -> Config:
    """``base`` (a preset path or an inline mapping) with ``fixed`` on top and the study's holdout default,
    validated by the trainer config."""
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
        section, name = split_key(key, "fixed")
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
