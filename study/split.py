"""Which images score a study's trials, and whether a session would change them.

A study's trials are comparable only when all of them were scored on the same validation split; the
data keys in ``SPLIT_KEYS`` decide it. ``split_change`` compares a session's trainer config with the
spec stored with the study (``StudyConfig.spec``); a pure function, for the refusal messages of the
sessions and workers that join a study.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adprune_core.config import Config, config_to_dict

SPLIT_KEYS = ("name", "holdout", "seed", "train_size")  # data keys that decide which images score a trial


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
