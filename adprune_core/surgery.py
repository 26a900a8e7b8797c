"""Physical pruning: cut channels out of a network so that it becomes a smaller ``nn.Module``.

Torch-Pruning's ``DependencyGraph`` does the cutting: removing output channels of a group's layer
also removes the matching batch-norm entries (weights and running statistics) and the input
channels of every consumer, across residual additions and depthwise convs.

Optimizer momentum survives a cut through a small trick made explicit here: Torch-Pruning slices a
parameter's ``.grad`` together with the parameter, so ``stash_momentum`` parks each momentum buffer
in ``.grad`` before the cut and ``restore_momentum`` moves the sliced buffers into the rebuilt
optimizer after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from adprune_core.graph import PRUNABLE, build_dependency_graph
from adprune_core.models.common import init_weights


def prune_groups(model: nn.Module, kept_idxs: Mapping[str, Sequence[int]],
                 example_input: torch.Tensor) -> None:
    """Keep only channels ``kept_idxs[group]`` of each named group; mutates ``model`` in place.

    ``group`` is a group's first prunable layer (``graph.PruneGroup.name``); indices refer to its
    current output channels. Groups whose kept set is every channel are left alone.
    """
    graph = build_dependency_graph(model, example_input)
    for name, keep in kept_idxs.items():
        layer = model.get_submodule(name)
        width = _out_channels(layer)
        if not keep or min(keep) < 0 or max(keep) >= width:
            raise ValueError(f"group {name}: kept indices must be a non-empty subset of 0..{width - 1}")
        removed = sorted(set(range(width)) - set(keep))
        if not removed:
            continue
        pruner = graph.get_pruner_of_module(layer)
        graph.get_pruning_group(layer, pruner.prune_out_channels, removed).prune()


def shrink_to_widths(model: nn.Module, widths: Mapping[str, int], example_input: torch.Tensor) -> None:
    """Cut each named group to its first ``widths[group]`` channels: the shapes of a saved network."""
    prune_groups(model, {name: list(range(w)) for name, w in widths.items()}, example_input)


def filter_l1_norms(model: nn.Module, layer: str) -> list[float]:
    """L1 norm of each output filter of ``layer`` (a conv or linear layer)."""
    weight = model.get_submodule(layer).get_parameter("weight").detach()
    return weight.abs().flatten(1).sum(1).float().cpu().tolist()


def stash_momentum(source: nn.Module, optimizer: torch.optim.Optimizer, target: nn.Module) -> None:
    """Park the momentum buffer of each of ``source``'s parameters in the ``.grad`` of the same-named
    parameter of ``target`` (a copy of ``source`` about to be cut), so that the cut slices it too."""
    params = dict(source.named_parameters())
    for name, p in target.named_parameters():
        buf = optimizer.state.get(params[name], {}).get("momentum_buffer")
        p.grad = None if buf is None else buf.detach().clone()


def restore_momentum(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Move the (sliced) buffers parked in ``.grad`` into ``optimizer``; returns how many moved."""
    moved = 0
    for p in model.parameters():
        if p.grad is not None:
            if p.grad.shape != p.shape:
                raise RuntimeError("a momentum buffer was not sliced with its parameter")
            optimizer.state[p]["momentum_buffer"] = p.grad
            p.grad = None
            moved += 1
    return moved


def reinitialize(model: nn.Module) -> None:
    """Start the (pruned) network afresh: every layer's own init and fresh BN statistics."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()  # type: ignore[operator]
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()  # type: ignore[operator]
    init_weights(model)


def _out_channels(layer: nn.Module) -> int:
    if not isinstance(layer, PRUNABLE):
        raise TypeError(f"{type(layer).__name__} is not a prunable layer")
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
