"""The study's public names in one place: the study config, its loading and validation, and the pure
map from a trial's suggested params to a trainer ``Config``. Each job lives in its own module; this one
only gathers their public names, so that ``from study.space import ...`` keeps working:

- ``study/spec.py``: the typed, frozen study spec (``StudyConfig``, ``Dimension``, the section specs) and
  the study file's format;
- ``study/study_file.py``: presets, study files and stored specs, with overrides -> ``StudyConfig``;
- ``study/spec_checks.py``: validation of each section (the trainer keys are the trainer config's to check);
- ``study/trial_params.py``: the schedule keys, ``suggest`` (Optuna) and ``trial_config`` (params -> trainer
  config), ``key_limits``;
- ``study/prune_window.py``: when a trial of the space can first prune, for messages and the start note;
- ``study/split.py``: which images score the trials, and how a session would change them.
"""

from __future__ import annotations

from study.prune_window import never_prunes_why, prune_window_note, prune_windows
from study.spec import (
    DEFAULT_MODELS,
    DIM_TYPES,
    DIRECTIONS,
    OBJECTIVE_METRICS,
    STUDY_HOLDOUT,
    STUDY_KEYS,
    STUDY_SECTIONS,
    Dimension,
    ObjectiveSpec,
    SamplerSpec,
    ShareSpec,
    StopperSpec,
    StudyConfig,
)
from study.split import SPLIT_KEYS, split_change
from study.study_file import (
    conditions_first,
    find_study_file,
    load_study_config,
    study_config_from_dict,
    study_config_from_spec,
)
from study.trial_params import (
    FIRST_FRAC,
    INTERVAL_FRAC,
    ROUNDS,
    SCHEDULE_KEYS,
    baseline_config,
    epoch_at,
    key_limits,
    suggest,
    trial_config,
)

__all__ = [
    "DEFAULT_MODELS", "DIM_TYPES", "DIRECTIONS", "FIRST_FRAC", "INTERVAL_FRAC", "OBJECTIVE_METRICS", "ROUNDS",
    "SCHEDULE_KEYS", "SPLIT_KEYS", "STUDY_HOLDOUT", "STUDY_KEYS", "STUDY_SECTIONS",
    "Dimension", "ObjectiveSpec", "SamplerSpec", "ShareSpec", "StopperSpec", "StudyConfig",
    "baseline_config", "conditions_first", "epoch_at", "find_study_file", "key_limits", "load_study_config",
    "never_prunes_why", "prune_window_note", "prune_windows", "split_change", "study_config_from_dict",
    "study_config_from_spec", "suggest", "trial_config",
]
