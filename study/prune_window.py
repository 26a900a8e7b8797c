"""When a trial of a study's space can first prune, for messages: why a prune config never prunes
(``never_prunes_why``), the window of first-prune epochs per schedule over the space's ranges
(``prune_windows``), and the note a study prints at its start when that window leaves few epochs to
recover (``prune_window_note``). Pure functions of the config; the first prune itself is the trainer's
rule (``adprune_core.policy.earliest_prune_epoch``).
"""

from __future__ import annotations

from typing import Any

from adprune_core.policy import earliest_prune_epoch
from study.spec import StudyConfig
from study.trial_params import trial_config


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
