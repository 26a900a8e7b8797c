"""Optuna samplers by name (``sampler.name`` in a study file).

Every sampler here handles several objectives and reads the constraints that trials set with
``trial.set_constraint``. A builder takes the study's ``SamplerSpec`` and the effective seed;
``build_sampler`` wraps the chosen one so that each trial draws from its own seed (``TrialSeededSampler``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from adprune_core.registry import Registry

SAMPLERS: Registry[Callable[[Any, int], Any]] = Registry("sampler", "sampler.name")


@SAMPLERS.register("tpe")
def _tpe(spec: Any, seed: int) -> Any:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


@SAMPLERS.register("nsga2")
def _nsga2(spec: Any, seed: int) -> Any:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population_size)


@SAMPLERS.register("random")
def _random(spec: Any, seed: int) -> Any:
    return optuna.samplers.RandomSampler(seed=seed)


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s draws in a study seeded with ``seed`` (pure)."""
    return (seed * 1_000_003 + number) % 2**32


def build_sampler(spec: Any) -> Any:
    """The study's sampler (``spec``: its ``SamplerSpec``), seeded per trial: ``TrialSeededSampler``."""
    return TrialSeededSampler(lambda seed: SAMPLERS.get(spec.name)(spec, seed), spec.seed)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler whose draws for trial n come from a fresh inner sampler seeded with ``trial_seed(seed, n)``.

    Trial numbers are unique within a study, so every process that shares the study (two ``make study``
    sessions started together, local workers, workers that joined from other machines) draws its own
    stream, while one session with a given seed still repeats its suggestions: trial n sees the same
    seed and the same finished trials. A resumed session continues with the next numbers, so it never
    replays an earlier session's draws. The inner sampler (TPE, NSGA-II, random) still reads every trial
    of the study, as it would unwrapped."""

    def __init__(self, build: Callable[[int], Any], seed: int) -> None:
        self._build, self._seed = build, seed
        self._number: int | None = None
        self._inner = build(seed % 2**32)

    def _for(self, trial: Any) -> Any:
        if trial.number != self._number:
            self._number, self._inner = trial.number, self._build(trial_seed(self._seed, trial.number))
        return self._inner

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
