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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adprune_core.config import ModelConfig, config_from_dict
from adprune_core.errors import ADPruneError
from adprune_core.files import atomic_write
from adprune_core.graph import prepare_model
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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a network saved by ``save_model``; in eval mode, on ``device``."""
    path = Path(path)
    arch_path, weights_path = path / ARCH_FILE, path / WEIGHTS_FILE
    if not arch_path.is_file() or not weights_path.is_file():
        raise ADPruneError(f"{str(path)!r} is not a saved network: it needs {ARCH_FILE} and "
                           f"{WEIGHTS_FILE}; pass the folder written by 'adprune train' (DIR/model)")
    arch = json.loads(arch_path.read_text())
    if arch.get("format") != FORMAT:
        raise ADPruneError(f"{str(arch_path)!r} has format {arch.get('format')!r}; this version reads "
                           f"{FORMAT!r}")
    model_cfg = config_from_dict({"model": arch["model"]}).model
    image_shape = tuple(arch["image_shape"])
    model = prepare_model(build_model(model_cfg, arch["num_classes"], image_shape))
    model.eval()
    shrink_to_widths(model, arch["group_widths"], torch.zeros(1, *image_shape))
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    return model.to(device).eval()


def read_architecture(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / ARCH_FILE).read_text())
