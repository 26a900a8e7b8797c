"""Tests of the search (study): Optuna, MLflow, workers, stores."""
