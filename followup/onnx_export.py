"""ONNX export of a rebuilt network, where it works, with an optional check against onnxruntime.

``export_onnx`` never raises for an export that fails: a pick is still useful without ONNX, so the
failure is returned (and written to the pick's ``metrics.json`` and README) instead. The graph has one
input ``images`` (float32, N x C x H x W, normalised as in training) and one output ``logits``
(N x classes), with a dynamic batch dimension. When ``onnxruntime`` is installed (it is optional), the
exported graph is run on a fixed input and compared with PyTorch's outputs.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ATOL = 1e-4  # largest absolute logit difference that counts as "matches"


def fixed_input(image_shape: tuple[int, int, int], batch: int = 4, seed: int = 0) -> torch.Tensor:
    """A reproducible (batch, C, H, W) float32 input (standard normal, like normalised images)."""
    return torch.randn(batch, *image_shape, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: nn.Module, path: str | Path, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Write ``model`` (eval mode, CPU, not modified) to ``path`` as one ONNX file; describe the outcome.

    Returns ``{"file", "input", "output", "onnxruntime_max_abs_diff", "matches_torch", "note"}`` on success
    (the last three None / a note when onnxruntime is missing) or ``{"file": None, "error": "..."}``."""
    path = Path(path)
    path.unlink(missing_ok=True)  # never leave an earlier pick's graph behind a failed export
    x = fixed_input(image_shape)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # any exporter failure (unsupported op, missing onnxscript): say why, go on
        path.unlink(missing_ok=True)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter colours its messages
        message = text.splitlines()[0] if text else ""
        return {"file": None, "error": f"{type(exc).__name__}: {message[:300]}"}
    shape = ", ".join(map(str, image_shape))
    result: dict[str, Any] = {"file": path.name, "input": f"{INPUT_NAME}: float32 [N, {shape}]",
                              "output": f"{OUTPUT_NAME}: float32 [N, classes]"}
    result.update(compare_onnxruntime(model, path, x))
    return result


def compare_onnxruntime(model: nn.Module, path: Path, x: torch.Tensor) -> dict[str, Any]:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on ``x``, if onnxruntime is here."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime_max_abs_diff": None, "matches_torch": None,
                "note": "onnxruntime is not installed: outputs not compared (pip install onnxruntime)"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    with torch.no_grad():
        want = model.eval()(x)
    diff = float((got - want).abs().max())
    return {"onnxruntime_max_abs_diff": diff, "matches_torch": diff <= ATOL,
            "note": f"onnxruntime vs PyTorch on a fixed input of {x.shape[0]} images: max |diff| {diff:.2e} "
                    f"(tolerance {ATOL:g})"}
