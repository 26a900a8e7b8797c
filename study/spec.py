"""The study spec as typed, frozen data: what is searched, what is fixed, what is optimised.

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

This module only declares the types and the allowed names; ``study/study_file.py`` reads a file into a
``StudyConfig`` and ``study/spec_checks.py`` validates each section. Numeric rules of a section field
sit in its metadata under the trainer config's names (``lo``, ``hi``: ``adprune_core/config.py``), with
``why``, the reason an error message gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adprune_core.config import MAX_SEED, Config

OBJECTIVE_METRICS = ("val_top1", "params", "flops", "train_flops_cum")
DIRECTIONS = ("maximize", "minimize")
STUDY_SECTIONS = ("sampler", "constraints", "stopper", "share")
STUDY_KEYS = ("base", "fixed", "space", "objectives", *STUDY_SECTIONS)
DIM_TYPES = ("categorical", "int", "float")
DEFAULT_MODELS = {"synthetic": "vgg11"}  # every other dataset: vgg19
STUDY_HOLDOUT = 0.1  # data.holdout of a study that does not set it


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
    seed: int = field(default=0, metadata={"lo": 0, "hi": MAX_SEED, "why": "samplers take 32-bit seeds"})
    startup_trials: int = field(default=10, metadata={"lo": 0})  # tpe: random trials before the model takes over
    population_size: int = field(default=50, metadata={"lo": 2, "why": "NSGA-II breeds pairs of parents"})  # nsga2


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
