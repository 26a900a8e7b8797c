"""Multi-objective Optuna search over the density-pruning design space, every trial tracked in MLflow.

Modules, one step each:
- ``space``: the study config (YAML -> frozen dataclass; ``spec``, ``study_file``, ``spec_checks``) and the
  pure map from suggested params to a trainer ``Config`` (``trial_params``);
- ``trial_record``: a trial's Optuna attributes, typed (``TrialRecord``);
- ``pareto``: domination, feasibility and the baseline, pure functions on plain numbers;
- ``stopping``: the dominated-trial stopper, a trainer callback;
- ``tracking``: MLflow, a trainer callback per trial plus the study's parent run;
- ``plots``: the per-layer density and width plot;
- ``objective``: one trial = trial config -> ``adprune_core.trainer.train`` with those callbacks;
- ``trials``, ``workers``, ``runner``: storage, heartbeats and retries; every process runs trials until the
  study holds its target; the baseline, resuming, the progress bar;
- ``cli``: ``adprune study``, ``worker``, ``mlflow-server`` and ``ui`` (``store_args``: where the records are).

Depends on ``adprune_core``; ``adprune_core`` never imports this package.
"""
