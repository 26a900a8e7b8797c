"""A trial's params: asked of Optuna over the space (``suggest``), then mapped, purely, to a trainer
``Config`` (``trial_config``).

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

The trainer config validates the result (``adprune_core.config.config_from_dict``); this module checks
only what the trainer does not know: the schedule keys' own ranges.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from adprune_core.config import SECTIONS, Config, config_from_dict, config_to_dict
from adprune_core.errors import ConfigError
from study.spec import Dimension

FIRST_FRAC, INTERVAL_FRAC, ROUNDS = "prune.first_frac", "prune.interval_frac", "prune.rounds"
SCHEDULE_KEYS = (FIRST_FRAC, INTERVAL_FRAC, ROUNDS)
# The trainer keys each schedule key sets: a schedule key and one of these may not both be searched.
SCHEDULE_KEY_SETS = {FIRST_FRAC: ("prune.warmup", "prune.epochs"), INTERVAL_FRAC: ("prune.interval", "prune.epochs"),
                     ROUNDS: ("prune.max_rounds",)}
# The least and greatest value of each schedule key (the trainer keys' come from their config fields).
_SCHEDULE_LIMITS = {FIRST_FRAC: (0.0, 1.0), INTERVAL_FRAC: (0.0, 1.0), ROUNDS: (1, None)}


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _epoch_at(frac: Any, epochs: int) -> int:
    if not _is_number(frac) or not 0 < frac < 1:
        raise ConfigError(f"{FIRST_FRAC}: {frac!r} is not a fraction of training strictly between 0 and 1; "
                          "use e.g. 0.3 (first prune after 30% of the epochs)")
    return epoch_at(frac, epochs)


def _span(frac: Any, epochs: int) -> int:
    if not _is_number(frac) or not 0 < frac <= 1:
        raise ConfigError(f"{INTERVAL_FRAC}: {frac!r} is not a fraction of training in (0, 1]; "
                          "use e.g. 0.2 (prunes 20% of the epochs apart)")
    return max(1, _round_half_up(frac * epochs))


def _rounds(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{ROUNDS}: {value!r} is not a whole number of prunes >= 1; use e.g. 3")
    return value


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
