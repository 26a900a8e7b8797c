"""Saving and rebuilding pruned networks without pickle.

A saved network is a folder with
- ``model.safetensors``: the weights and buffers (``state_dict``), pickle-free;
- ``model.json``: what is needed to rebuild the architecture: the model config, the number of
  classes, the input shape, each pruned group's final width, and the pruning history
  (epoch, group, kept channel indices) for provenance.

Rebuilding is build the dense network -> ``prepare_model`` -> cut every group to its saved width ->
load the weights (strictly). Which channels were kept does not matter for the shapes, so the
widths are enough; the history says where they came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adprune_core.config import ModelConfig, config_from_dict
from adprune_core.errors import ADPruneError
from adprune_core.files import atomic_write
from adprune_core.graph import PRUNABLE, prepare_model
from adprune_core.models import build_model
from adprune_core.surgery import shrink_to_widths

FORMAT = "adprune-model/1"
WEIGHTS_FILE = "model.safetensors"
ARCH_FILE = "model.json"


def save_model(out_dir: str | Path, model: nn.Module, *, model_cfg: ModelConfig, num_classes: int,
               image_shape: tuple[int, int, int], group_widths: Mapping[str, int],
               history: list[dict[str, Any]] | None = None,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` (created) as safetensors weights plus a JSON architecture."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = cpu_state_dict(model)
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    arch = {
        "format": FORMAT,
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(model_cfg).items()},
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "group_widths": dict(group_widths),
        "history": history or [],
        "metadata": dict(metadata or {}),
    }
    atomic_write(out / ARCH_FILE, lambda tmp: tmp.write_text(json.dumps(arch, indent=2)))
    return out


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` copied to the CPU, each tensor contiguous and its own (safetensors-ready)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


MAX_NUM_CLASSES = 100_000  # bounds on what a model.json may ask to build (a tampered file must not allocate
MAX_IMAGE_SIDE = 4096       # terabytes before anything checks it)
_LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a network saved by ``save_model``; in eval mode, on ``device``. A folder that is not a
    saved network, or whose ``model.json`` or weights are damaged or do not fit together (unknown groups,
    widths wider than the network, path-like names, huge numbers), is a one-line ``ADPruneError``."""
    path = Path(path)
    arch_path, weights_path = path / ARCH_FILE, path / WEIGHTS_FILE
    if not arch_path.is_file() or not weights_path.is_file():
        raise ADPruneError(f"{str(path)!r} is not a saved network: it needs {ARCH_FILE} and "
                           f"{WEIGHTS_FILE}; pass the folder written by 'adprune train' (DIR/model)")
    arch = read_architecture(path)
    model_cfg = config_from_dict({"model": arch["model"]}).model
    image_shape = tuple(arch["image_shape"])
    model = prepare_model(build_model(model_cfg, arch["num_classes"], image_shape))
    model.eval()
    _check_widths(arch_path, model, arch["group_widths"])
    shrink_to_widths(model, arch["group_widths"], torch.zeros(1, *image_shape))
    try:
        weights = load_file(str(weights_path))
        model.load_state_dict(weights, strict=True)
    except Exception as exc:  # a damaged file, or weights of another architecture
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ADPruneError(f"{str(weights_path)!r} does not load into the network {ARCH_FILE} describes "
                           f"({type(exc).__name__}: {first}); the folder is damaged: export it again") from None
    return model.to(device).eval()


def read_architecture(path: str | Path) -> dict[str, Any]:
    """``model.json`` of the saved network in ``path``, its format and fields checked (``ADPruneError``)."""
    arch_path = Path(path) / ARCH_FILE
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ADPruneError(f"{str(arch_path)!r} is not readable JSON ({type(exc).__name__}: {exc}); "
                           "the folder is damaged: export it again") from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        found = arch.get("format") if isinstance(arch, dict) else type(arch).__name__
        raise ADPruneError(f"{str(arch_path)!r} has format {found!r}; this version reads {FORMAT!r}")

    def bad(field: str, value: Any, rule: str) -> ADPruneError:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return ADPruneError(f"{str(arch_path)!r}: {field} {shown} {rule}; the file was changed or damaged: "
                            "export the network again")

    if not isinstance(arch.get("model"), dict):
        raise bad("model", arch.get("model"), "must be a mapping of model settings")
    classes = arch.get("num_classes")
    if not isinstance(classes, int) or not _is_int(classes) or not 1 <= classes <= MAX_NUM_CLASSES:
        raise bad("num_classes", classes, f"must be a whole number from 1 to {MAX_NUM_CLASSES}")
    shape = arch.get("image_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(v) for v in shape)
            or not 1 <= shape[0] <= 4 or not all(1 <= v <= MAX_IMAGE_SIDE for v in shape[1:])):
        raise bad("image_shape", shape, f"must be [channels 1-4, height, width], sides 1 to {MAX_IMAGE_SIDE}")
    widths = arch.get("group_widths")
    if not isinstance(widths, dict):
        raise bad("group_widths", widths, "must map layer names to widths")
    for name, width in widths.items():
        if not _LAYER_NAME.fullmatch(name):
            raise bad("group_widths name", name, "is not a layer name (letters, digits and _ joined by dots)")
        if not _is_int(width) or width < 1:
            raise bad(f"group_widths[{name!r}]", width, "must be a whole number >= 1")
    return arch


def _check_widths(arch_path: Path, model: nn.Module, widths: Mapping[str, int]) -> None:
    """Every saved group is a prunable layer of the rebuilt dense ``model`` and no wider than it."""
    layers = dict(model.named_modules())
    for name, width in widths.items():
        layer = layers.get(name)
        if not isinstance(layer, PRUNABLE):
            raise ADPruneError(f"{str(arch_path)!r}: group_widths names {name!r}, which is not a prunable layer "
                               "of the network it describes; the file was changed or damaged: export it again")
        full = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if width > full:
            raise ADPruneError(f"{str(arch_path)!r}: group_widths[{name!r}] {width} is wider than the layer's "
                               f"{full} channels; the file was changed or damaged: export it again")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
