"""Pruning decisions as pure functions on plain numbers: when to prune, how wide, which channels.

Nothing here touches a model. The trainer feeds measured densities in and gets decisions out.

When (``prune.schedule``), deciding after epoch ``epoch`` (1-based) has finished:
- ``none``: never (the dense baseline).
- ``fixed``: when ``epoch`` is in ``prune.epochs``.
- ``interval``: at epochs ``warmup, warmup + interval, warmup + 2 * interval, ...`` (epoch >= 1).
- ``saturation``: when at least ``warmup`` epochs have passed since the start or the last prune,
  and over the last ``patience`` epoch-to-epoch steps (all since the last prune) every layer's
  density moved by less than ``density_tol``.
All schedules stop after ``max_rounds`` prunes, never prune after the last epoch (nothing would
retrain the cut network), and stop for good once a round would remove less than ``min_gain`` of
the parameters (the trainer checks that with ``worth_pruning``).

How wide (``prune.width_rule``): ``ad``: ``new_width`` = max(min_channels, ceil(width_scale * density *
width)), rounded up to a multiple of ``round_to``, never above the current width; ``threshold``:
``threshold_width`` = the number of the group's channels whose density is at least
``prune.channel_threshold`` (as activation-based pruners such as Hu et al.'s APoZ do), with the same
floor, rounding and cap.

Residual groups: channels tied through additions pass through several activations. Their
densities combine (``prune.group_density``) as ``mean``: pooled counts, i.e. non-zero outputs over
all outputs of all the group's activations (each activation weighs by its number of outputs), or
``max``: per channel the highest density among the activations, and for the group the highest
layer density (conservative: a channel busy anywhere is kept).

Which channels (``prune.select``): the highest per-channel density, the largest L1 norm of the
group's first layer's filters, or uniformly at random; channels whose density is below
``prune.channel_density_min`` always go first (the width then drops below ``new_width`` if fewer
channels clear the floor, but not below ``min_channels``, rounded up to ``round_to``).

A whole cut (``plan_cut``): per group its measured counts, width and (under ``select=l1``) filter norms in,
per group the kept channel indices and the ``GroupDecision`` that sized it out. The random channel scores
of group ``i`` (its index among all the network's groups) at ``epoch`` are seeded with
``seed * 100_003 + epoch * 1_009 + i`` (``cut_seed``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adprune_core.config import Config, PruneConfig
from adprune_core.density import ChannelCounts
from adprune_core.errors import ConfigError
from adprune_core.records import GroupDecision

# Guards ceil() against float noise: 0.5 * 64 may be 32.000000000000004.
_EPS = 1e-9


def should_prune(cfg: PruneConfig, epoch: int, total_epochs: int,
                 density_history: Sequence[Mapping[str, float]], last_prune_epoch: int,
                 rounds_done: int) -> bool:
    """Whether to prune right after ``epoch`` (1-based) of ``total_epochs``.

    ``density_history[i]`` holds the layer densities measured during epoch ``i + 1``;
    ``last_prune_epoch`` is 0 before the first prune.
    """
    if cfg.schedule == "none" or rounds_done >= cfg.max_rounds or epoch >= total_epochs:
        return False
    if cfg.schedule == "fixed":
        return epoch in cfg.epochs
    if cfg.schedule == "interval":
        return epoch >= cfg.warmup and (epoch - cfg.warmup) % cfg.interval == 0
    if cfg.schedule == "saturation":
        return (epoch - last_prune_epoch >= cfg.warmup
                and densities_settled(density_history[last_prune_epoch:epoch], cfg.density_tol,
                                      cfg.patience))
    raise ValueError(f"unknown prune.schedule {cfg.schedule!r}")


def earliest_prune_epoch(cfg: PruneConfig, total_epochs: int) -> int | None:
    """The first epoch (1-based) after which ``should_prune`` can possibly say yes in a run of
    ``total_epochs``, whatever the densities do; None when the schedule provably never prunes in it.

    ``fixed``: its first epoch before the last; ``interval``: ``warmup`` (or ``interval`` when ``warmup`` is
    0); ``saturation``: ``max(warmup, patience + 1)`` (it needs ``patience`` epoch-to-epoch steps of density
    history); ``none``, ``max_rounds`` 0, or an epoch at or after the last: None. Whether densities settle
    is not known in advance: a ``saturation`` run may still end without a cut."""
    if cfg.schedule == "none" or cfg.max_rounds < 1:
        return None
    if cfg.schedule == "fixed":
        first = min((e for e in cfg.epochs if e >= 1), default=None)
    elif cfg.schedule == "interval":
        first = cfg.warmup if cfg.warmup >= 1 else cfg.interval
    elif cfg.schedule == "saturation":
        first = max(cfg.warmup, cfg.patience + 1)
    else:
        raise ValueError(f"unknown prune.schedule {cfg.schedule!r}")
    return first if first is not None and first < total_epochs else None


def first_prune_epoch(cfg: PruneConfig, total_epochs: int,
                      density_history: Sequence[Mapping[str, float]]) -> int | None:
    """The first epoch (1-based) after which a run that has not pruned yet decides to prune, replaying
    ``should_prune`` over ``density_history`` (``[i]`` = densities of epoch ``i + 1``); None when it does
    not prune within the ``len(density_history)`` epochs given. ``saturation`` needs the history; the
    other schedules depend on the epoch alone. (The trainer may still not cut there: ``worth_pruning``.)"""
    for epoch in range(1, len(density_history) + 1):
        if should_prune(cfg, epoch, total_epochs, density_history[:epoch], 0, 0):
            return epoch
    return None


def first_prune_range(cfg: PruneConfig, total_epochs: int) -> tuple[int, int] | None:
    """(earliest, latest) epoch of a run's first prune decision, whatever its densities; None if it never
    prunes. ``fixed`` and ``interval`` know theirs from the config (earliest = latest); ``saturation``
    starts at ``earliest_prune_epoch`` and may come as late as the second-to-last epoch."""
    earliest = earliest_prune_epoch(cfg, total_epochs)
    if earliest is None:
        return None
    return (earliest, total_epochs - 1) if cfg.schedule == "saturation" else (earliest, earliest)


def densities_settled(history: Sequence[Mapping[str, float]], tol: float, patience: int) -> bool:
    """True when the last ``patience`` steps of ``history`` each moved every layer by < ``tol``."""
    if len(history) < patience + 1:
        return False
    recent = history[-(patience + 1):]
    for before, after in zip(recent, recent[1:]):
        if any(abs(after[k] - before[k]) >= tol for k in after.keys() & before.keys()):
            return False
    return True


def new_width(density: float, width: int, *, width_scale: float = 1.0, min_channels: int = 1,
              round_to: int = 1) -> int:
    """The width a layer of ``width`` channels and activation density ``density`` shrinks to."""
    target = max(min_channels, math.ceil(width_scale * density * width - _EPS))
    target = math.ceil(target / round_to) * round_to
    return min(width, target)


def channels_at_threshold(channel_densities: Sequence[float], threshold: float) -> int:
    """How many channels have a density of at least ``threshold`` (float noise forgiven)."""
    return sum(1 for d in channel_densities if d >= threshold - _EPS)


def threshold_width(channel_densities: Sequence[float], threshold: float, *, min_channels: int = 1,
                    round_to: int = 1) -> int:
    """The width of a group that keeps its channels whose density is at least ``threshold``: their count,
    at least ``min_channels``, rounded up to a multiple of ``round_to``, never above the current width."""
    count = channels_at_threshold(channel_densities, threshold)
    target = math.ceil(max(min_channels, count) / round_to) * round_to
    return min(len(channel_densities), target)


def combine_counts(counts: Sequence[ChannelCounts], rule: str) -> tuple[float, list[float]]:
    """(group density, per-channel densities) of a group measured by several activations."""
    if not counts:
        raise ValueError("a group needs at least one measured activation")
    if rule == "mean":
        total = sum(c.per_channel_total for c in counts)
        per_channel = [sum(col) / total if total else 0.0 for col in zip(*(c.nonzero for c in counts))]
        n_outputs = total * len(per_channel)
        density = sum(sum(c.nonzero) for c in counts) / n_outputs if n_outputs else 0.0
        return density, per_channel
    if rule == "max":
        per_channel = [max(col) for col in zip(*(c.channel_densities for c in counts))]
        return max(c.layer_density for c in counts), per_channel
    raise ValueError(f"unknown prune.group_density {rule!r}")


def select_channels(scores: Sequence[float], keep: int, *, channel_densities: Sequence[float],
                    density_min: float = 0.0, min_channels: int = 1, round_to: int = 1) -> list[int]:
    """Indices (sorted) of the channels that stay: the ``keep`` best by ``scores``, ties to the lower
    index, after channels below ``density_min`` have been sent to the back of the queue."""
    n = len(scores)
    eligible = sum(1 for d in channel_densities if d >= density_min)
    if eligible < keep:
        keep = max(min_channels, math.ceil(eligible / round_to) * round_to)
    keep = min(keep, n)
    order = sorted(range(n), key=lambda i: (channel_densities[i] < density_min, -scores[i], i))
    return sorted(order[:keep])


def channel_scores(rule: str, channel_densities: Sequence[float], l1_norms: Sequence[float],
                   seed: int) -> list[float]:
    """Per-channel importance for ``prune.select`` (higher stays)."""
    if rule == "density":
        return list(channel_densities)
    if rule == "l1":
        return list(l1_norms)
    if rule == "random":
        rng = random.Random(seed)
        return [rng.random() for _ in channel_densities]
    raise ValueError(f"unknown prune.select {rule!r}")


def worth_pruning(params_before: int, params_after: int, min_gain: float) -> bool:
    """Whether removing ``params_before - params_after`` parameters is at least ``min_gain`` of them."""
    if params_before <= 0:
        return False
    return (params_before - params_after) / params_before >= max(min_gain, _EPS)


@dataclass(frozen=True)
class GroupMeasure:
    """One channel group at a cut: its name, its current width, the counts of the activations that measure
    it (none: the group is not cut) and, for ``prune.select=l1``, its first layer's filter L1 norms."""

    name: str
    width: int
    counts: tuple[ChannelCounts, ...]
    l1_norms: tuple[float, ...] = ()


@dataclass(frozen=True)
class CutPlan:
    """Group -> kept channel indices (sorted), and group -> what decided its width."""

    kept: Mapping[str, list[int]]
    decisions: Mapping[str, GroupDecision]


def cut_seed(seed: int, epoch: int, group_index: int) -> int:
    """The seed of the random channel scores of the ``group_index``-th group at a cut after ``epoch``."""
    return seed * 100_003 + epoch * 1_009 + group_index


def plan_cut(cfg: PruneConfig, groups: Sequence[GroupMeasure], *, seed: int, epoch: int,
             widths: Mapping[str, int] | None = None) -> CutPlan:
    """Which channels each measured group keeps at the cut after ``epoch`` (``groups`` in the network's
    order; their position is the ``group_index`` of ``cut_seed``). ``widths`` (group -> channels) overrides
    the width rule for those groups (capped at the current width). The decision per group: ``density``
    (``prune.group_density``), ``width_before``, ``at_threshold`` under ``width_rule=threshold``, from
    which ``new_width`` / ``threshold_width`` recompute the width (``prune.channel_density_min`` may then
    cut below it), or ``planned_width``."""
    kept, decisions = {}, {}
    for i, g in enumerate(groups):
        if not g.counts:
            continue
        density, per_channel = combine_counts(g.counts, cfg.group_density)
        at_threshold = planned = None
        if widths is not None and g.name in widths:
            keep = min(g.width, widths[g.name])
            planned = widths[g.name]
        elif cfg.width_rule == "threshold":
            keep = threshold_width(per_channel, cfg.channel_threshold, min_channels=cfg.min_channels,
                                   round_to=cfg.round_to)
            at_threshold = channels_at_threshold(per_channel, cfg.channel_threshold)
        else:
            keep = new_width(density, g.width, width_scale=cfg.width_scale, min_channels=cfg.min_channels,
                             round_to=cfg.round_to)
        scores = channel_scores(cfg.select, per_channel, g.l1_norms, seed=cut_seed(seed, epoch, i))
        kept[g.name] = select_channels(scores, keep, channel_densities=per_channel, density_min=cfg.channel_density_min,
                                       min_channels=cfg.min_channels, round_to=cfg.round_to)
        decisions[g.name] = GroupDecision(density, g.width, at_threshold=at_threshold, planned_width=planned)
    return CutPlan(kept, decisions)


def check_width_plan(cfg: Config, plan: Mapping[int, Mapping[str, int]] | None) -> dict[int, Mapping[str, int]]:
    """``plan`` with int epochs, or {} without one; ConfigError unless the fixed schedule prunes exactly then."""
    if not plan:
        return {}
    epochs = sorted(int(e) for e in plan)
    if cfg.prune.schedule != "fixed" or list(cfg.prune.epochs) != epochs:
        raise ConfigError(f"width_plan: replaying widths at epochs {epochs} needs prune.schedule=fixed and "
                          f"prune.epochs={epochs} (got {cfg.prune.schedule}, {list(cfg.prune.epochs)}); set them so")
    return {int(e): w for e, w in plan.items()}
