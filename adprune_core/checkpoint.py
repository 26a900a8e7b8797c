"""Epoch checkpoints: all a run needs to continue after the epoch it was taken at, in one pickle-free file.

``<dir>/checkpoint.safetensors`` holds the tensors
- ``model/<key>``: the network's ``state_dict`` (weights and batch-norm buffers) at its current,
  possibly pruned, widths;
- ``momentum/<parameter name>``: the SGD momentum buffers (parameters without one have none);
- ``rng/torch`` (uint8) and ``rng/cuda/<i>``: the global random-number generators' states;
and, in the safetensors header's metadata, ``format`` and ``state``: a JSON object with the epoch and
the group widths (``epoch``, ``group_widths``) plus whatever the caller adds (the trainer: its summary
so far, its status, its pruning counters and density history).

The file is written under a temporary name, flushed to disk and renamed over the previous one
(``os.replace``), so a reader (a resumed run, a process killed at any instant) sees the previous
checkpoint or the new one, never a mix. Rebuilding the network is build the dense network ->
``prepare_model`` -> cut each group to its saved width -> load the weights, as ``export.load_model``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from adprune_core.errors import ADPruneError
from adprune_core.export import cpu_state_dict
from adprune_core.files import atomic_write

FORMAT = "adprune-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.safetensors"
# Config keys that may differ between a run and its resumption: they do not change the maths.
RESUME_IGNORED_KEYS = frozenset({"train.progress", "train.device", "data.cache_dir", "data.download"})


@dataclass
class Checkpoint:
    state: dict[str, Any]  # the JSON part: epoch, group_widths and the caller's fields
    model_state: dict[str, torch.Tensor]  # state_dict, on the CPU
    momentum: dict[str, torch.Tensor]  # parameter name -> momentum buffer, on the CPU
    rng: dict[str, torch.Tensor]  # "torch" and "cuda/<i>" -> uint8 RNG state

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def group_widths(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.state["group_widths"].items()}


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def save_checkpoint(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    group_widths: Mapping[str, int], state: Mapping[str, Any] | None = None) -> Path:
    """Write the checkpoint of ``epoch`` (1-based, finished) to ``directory`` (created), atomically.

    ``state`` is extra JSON (plain data; floats may be NaN); nothing passed is modified."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in cpu_state_dict(model).items()}
    tensors.update({f"momentum/{k}": v for k, v in momentum_buffers(model, optimizer).items()})
    tensors.update({f"rng/{k}": v for k, v in rng_states().items()})
    payload = {**(state or {}), "epoch": int(epoch), "group_widths": {k: int(v) for k, v in group_widths.items()}}
    metadata = {"format": FORMAT, "state": json.dumps(payload, default=float)}
    target = checkpoint_path(directory)
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return target


def read_state(directory: str | Path) -> dict[str, Any] | None:
    """The JSON part of the checkpoint in ``directory`` (reads the header only), or None if there is none."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return _state(path, f)


def load_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint in ``directory``, tensors on the CPU, or None if there is none."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:  # one open: header and tensors of the same file
        state = _state(path, f)
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "momentum": {}, "rng": {}}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        parts[kind][name] = value
    return Checkpoint(state, parts["model"], parts["momentum"], parts["rng"])


def copy_checkpoint(source_dir: str | Path, target_dir: str | Path) -> bool:
    """Copy the checkpoint of ``source_dir`` into ``target_dir`` (atomically); False if there is none."""
    source = checkpoint_path(source_dir)
    if not source.is_file():
        return False
    Path(target_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(checkpoint_path(target_dir), lambda tmp: shutil.copyfile(source, tmp))
    return True


def remove_checkpoint(directory: str | Path) -> None:
    """Delete the checkpoint in ``directory`` and the folder itself if that leaves it empty."""
    directory = Path(directory)
    checkpoint_path(directory).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def momentum_buffers(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameter name -> a CPU copy of its momentum buffer, for the parameters that have one."""
    out = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().contiguous().clone()
    return out


def restore_momentum_buffers(model: nn.Module, optimizer: torch.optim.Optimizer,
                             buffers: Mapping[str, torch.Tensor]) -> int:
    """Put ``buffers`` (by parameter name) into ``optimizer``'s state, on each parameter's device and
    in its memory layout; returns how many. A name or shape that does not match is an error."""
    params = dict(model.named_parameters())
    for name, buf in buffers.items():
        p = params.get(name)
        if p is None or p.shape != buf.shape:
            raise ADPruneError(f"checkpoint momentum {name!r} {tuple(buf.shape)} matches no parameter of the "
                               "rebuilt network; the checkpoint belongs to another network")
        optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)
    return len(buffers)


def rng_states() -> dict[str, torch.Tensor]:
    """The global torch RNG state (and each CUDA device's, when CUDA is initialised)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng_states(states: Mapping[str, torch.Tensor]) -> None:
    """Restore what ``rng_states`` saved; CUDA states only where the same number of devices is visible."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted((k for k in states if k.startswith("cuda/")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any],
                    ignored: frozenset[str] = RESUME_IGNORED_KEYS) -> list[str]:
    """``"key: saved -> current"`` for each dotted config key that differs (``ignored`` keys aside)."""
    a, b = _flat(saved), _flat(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in ignored and a.get(k) != b.get(k)]


def _flat(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _state(path: Path, f: Any) -> dict[str, Any]:
    """The JSON part of the open checkpoint ``f`` (a ``safe_open`` handle of ``path``), its format checked."""
    metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT or "state" not in metadata:
        raise ADPruneError(f"{str(path)!r} is not an adprune checkpoint (format {metadata.get('format')!r}, "
                           f"expected {FORMAT!r}); delete it or point checkpoint_dir elsewhere")
    return json.loads(metadata["state"])
