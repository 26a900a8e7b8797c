"""Pareto analysis and reports of studies, and taking a compressed model away (pick, controls).

Depends on ``study`` and ``adprune_core``; nothing depends on it.
"""
