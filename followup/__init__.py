"""What follows a study: take a Pareto-optimal network away, and ask whether pruning paid.

- ``adprune pick`` (``pick.py``, ``registry.py``, ``onnx_export.py``): registers one trial's network in the MLflow model
  registry and exports it to a folder (safetensors + architecture, ONNX where the export works).
- ``adprune control`` (``control.py``): trains a trial's controls (scratch, uniform width, random
  channels, other seeds) and records them as MLflow runs that ``make report`` reads.

Both write (a registry, folders, new training runs), so they live apart from ``reports``, which only reads.
Depends on ``reports`` (choosing the trial: the knee, the study view), ``study`` and ``adprune_core``;
only the front door (``adprune``) imports it.
"""
