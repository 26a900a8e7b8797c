"""Optuna samplers by name (``sampler.name`` in a study file).

Every sampler here handles several objectives and reads the constraints that trials set with
``trial.set_constraint``. A builder takes the study's ``SamplerSpec`` and the effective seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adprune_core.registry import Registry

SAMPLERS: Registry[Callable[[Any, int], Any]] = Registry("sampler", "sampler.name")


@SAMPLERS.register("tpe")
def _tpe(spec: Any, seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


@SAMPLERS.register("nsga2")
def _nsga2(spec: Any, seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population_size)


@SAMPLERS.register("random")
def _random(spec: Any, seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)
