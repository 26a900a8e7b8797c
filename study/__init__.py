"""Multi-objective Optuna search over the density-pruning design space, every trial tracked in MLflow.

Modules, one step each:
- ``space``: the study config (YAML -> frozen dataclass) and the pure map from suggested params to a
  trainer ``Config``;
- ``pareto``: domination and the Pareto front, pure functions on plain numbers;
- ``stopping``: the dominated-trial stopper, a trainer callback;
- ``tracking``: MLflow, a trainer callback per trial plus the study's parent run;
- ``plots``: the per-layer density and width plot;
- ``objective``: one trial = trial config -> ``adprune_core.trainer.train`` with those callbacks;
- ``runner``: storage, sampler, the baseline, resuming, the trial loop;
- ``cli``: ``adprune study`` and ``adprune ui``.

Depends on ``adprune_core``; ``adprune_core`` never imports this package.
"""
