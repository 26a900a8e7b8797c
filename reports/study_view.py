"""The one way a study is opened for reading: its stores, its name, its trials and objectives (``StudyView``).

``open_study_view`` resolves the study (without a name, the storage's only one), loads its trials sorted by
number and checks its objective names (Optuna's ``study.metric_names``, ``study.trials.stored_objective_names``).
The report (``reports.load``), ``adprune pick`` and ``adprune control`` all start here. Reads the stores
``study.runner`` writes (``study.stores``: embedded in the runtime folder, or servers); never creates one.
Every user mistake (no store, unknown study, several studies and no name, a study not made by
``adprune study``) is a one-line ``ConfigError`` naming the value, the rule and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from adprune_core.errors import ConfigError
from reports.pareto import METRICS
from study.pareto import completed_baseline
from study.stores import Stores, location, sqlite_path
from study.trials import stored_objective_names


def open_storage(where: Stores | str | Path) -> Any:
    """The Optuna storage of ``Stores.of(where)`` (``study.trials.optuna_storage``); ``ConfigError`` when an
    embedded storage does not exist (Optuna would create an empty one) or cannot be opened."""

    from study.trials import optuna_storage

    stores = Stores.of(where)
    path = sqlite_path(stores.optuna_url)
    if path is not None and not path.is_file():
        raise ConfigError(f"no Optuna storage at {path}; run a study first (make study), or pass its folder with "
                          "--runs-dir (make ... RUNS_DIR=dir) or its URL with --storage (make ... STORAGE=url)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna_storage(stores)


def study_names(where: Stores | str | Path, storage: Any = None) -> list[str]:
    """The names of the studies in the Optuna storage, sorted: ``storage`` when given (opened by
    ``open_storage``), else ``open_storage(where)``."""

    return sorted(optuna.get_all_study_names(storage if storage is not None else open_storage(where)))


def resolve_study(where: Stores | str | Path, name: str | None, storage: Any = None) -> str:
    """``name`` when the storage holds it; without a name, the storage's only study. ``storage``: the
    opened Optuna storage of ``where`` (``open_storage``), opened here when not given.

    ConfigError names the known studies when ``name`` is unknown, or when there are several and no name.
    """
    stores = Stores.of(where)
    names = study_names(stores, storage)
    at = location(stores.optuna_url)
    if not names:
        raise ConfigError(f"no studies in {at}; run one first (make study)")
    if name is None:
        if len(names) == 1:
            return names[0]
        raise ConfigError(f"{at} holds {len(names)} studies ({', '.join(names)}); name one with --study NAME "
                          "(make ... STUDY=NAME)")
    if name not in names:
        raise ConfigError(f"unknown study {name!r} in {at}; known: {', '.join(names)}")
    return name


def objective_names(study: optuna.Study, name: str) -> tuple[str, ...]:
    """The objective names of study ``name`` (``study.trials.stored_objective_names``), checked: one per
    direction, each a metric the trainer records; a ConfigError for a study not made by ``adprune study``."""
    names = stored_objective_names(study) or ()
    n = len(study.directions)
    if len(names) != n or not set(names) <= set(METRICS):
        raise ConfigError(f"study {name!r} records objectives {list(names)!r}, not {n} of {', '.join(METRICS)}; "
                          "it was not made by adprune study, which the report needs")
    return names


@dataclass
class StudyView:
    """A loaded study: its name, runtime folder, trials (by number), objectives and stores."""

    name: str
    runs_dir: Path
    study: optuna.Study
    trials: list[FrozenTrial]
    objective_names: tuple[str, ...]
    directions: tuple[str, ...]
    stores: Stores

    @property
    def pareto(self) -> list[FrozenTrial]:
        """The COMPLETE, feasible, non-dominated trials, by number (Optuna's ``study.best_trials``)."""
        return sorted(self.study.best_trials, key=lambda t: t.number)

    @property
    def baseline(self) -> FrozenTrial | None:
        """The last COMPLETE dense baseline (the one trials' accuracy drops were measured against)."""
        return completed_baseline(self.trials)

    @property
    def size_objective(self) -> str:
        """``flops`` or ``params``: the size the study minimises (flops when it has both or neither)."""
        return "params" if "params" in self.objective_names and "flops" not in self.objective_names else "flops"

    def pareto_numbers(self) -> str:
        numbers = [str(t.number) for t in self.pareto]
        return ", ".join(numbers) if numbers else "none"


def open_study_view(where: Stores | str | Path, name: str | None) -> StudyView:
    """Study ``name`` from its stores (``Stores.of(where)``); without a name, the storage's only study.
    A study without trials is a ``ConfigError`` (nothing to report, pick or control yet)."""
    stores = Stores.of(where)
    storage = open_storage(stores)
    name = resolve_study(stores, name, storage)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    if not trials:
        raise ConfigError(f"study {name!r} in {location(stores.optuna_url)} has no trials yet; run it (make study)")
    directions = tuple(d.name.lower() for d in study.directions)
    return StudyView(name, stores.runs_dir, study, trials, objective_names(study, name), directions, stores)
