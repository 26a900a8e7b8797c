"""Pareto analysis and reports of studies: read-only (``adprune report``).

Reads the Optuna study and the MLflow runs, never trains and never writes the stores; what writes after a
study (``adprune pick``, ``adprune control``) lives in ``followup``. Depends on ``study`` and
``adprune_core``; only ``followup`` and the front door import it.
"""
