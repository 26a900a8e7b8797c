"""Where to measure and what to cut: a network's prunable channel groups and their activations.

A *prunable layer* is a conv or linear layer whose output channels can be removed (every one but
the classifier that produces the logits). Torch-Pruning's ``DependencyGraph`` couples layers whose
output channels must be cut together, e.g. all convs feeding one residual stream; such a set is a
*group*, named after its first layer in module order.

A *measuring activation* of a layer is the first ReLU/ReLU6 its output reaches through
channel-preserving ops (batch norm, pooling, dropout, identity, residual additions), found by
``torch.fx``. The activation after a residual addition therefore measures every layer that feeds
the addition. A group whose layers reach no activation (e.g. MobileNet's linear bottlenecks) has
no density and is never pruned.

``prepare_model`` first gives every use of a shared activation module its own copy (torchvision's
ResNet calls ``self.relu`` twice per block), so that each activation has one meaning and one name.
``build_dependency_graph`` traces Torch-Pruning's graph once here, for ``analyse`` and for the cuts of
``adprune_core.surgery`` (which builds on this module, never the other way round).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import fx, nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)
PRUNABLE = (nn.Conv2d, nn.Linear)
PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.Dropout, nn.Identity, nn.Sequential)
ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class PruneGroup:
    """Layers whose output channels are cut together, and the activations that measure them."""

    name: str  # the group's first prunable layer, in module order
    layers: tuple[str, ...]  # prunable layers whose output channels belong to the group
    activations: tuple[str, ...]  # activation modules whose outputs are this group's channels
    width: int  # channels now


@dataclass(frozen=True)
class ModelGraph:
    groups: tuple[PruneGroup, ...]  # prunable groups with at least one measuring activation
    layer_activation: dict[str, str]  # prunable layer -> its measuring activation
    output_layers: tuple[str, ...]  # layers producing the logits: never pruned

    def group(self, name: str) -> PruneGroup:
        return next(g for g in self.groups if g.name == name)

    @property
    def activations(self) -> tuple[str, ...]:
        return tuple(sorted({a for g in self.groups for a in g.activations}))

    def widths(self) -> dict[str, int]:
        """Prunable layer -> its output channels (layers of one group share one width)."""
        return {layer: g.width for g in self.groups for layer in g.layers}

    def group_widths(self) -> dict[str, int]:
        """Group (its first layer) -> its output channels: what ``surgery.shrink_to_widths`` cuts back to."""
        return {g.name: g.width for g in self.groups}


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's graph of ``model``, traced in eval mode so that BN statistics stay untouched."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        model.train(was_training)


def prepare_model(model: nn.Module) -> nn.Module:
    """Return ``model`` with every activation module used once; unchanged if none is shared.

    Deterministic, so that a saved network can be rebuilt the same way. Shared uses become
    ``<name>_1``, ``<name>_2``... inside the same parent module of an ``fx.GraphModule``.
    """
    traced = fx.symbolic_trace(model)
    seen: dict[str, int] = {}
    shared = False
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(traced.get_submodule(node.target), ACTIVATIONS):
            seen[node.target] = seen.get(node.target, 0) + 1
            shared |= seen[node.target] > 1
    if not shared:
        return model
    uses: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or seen.get(node.target, 1) == 1:
            continue
        uses[node.target] = uses.get(node.target, 0) + 1
        if uses[node.target] > 1:
            new_name = f"{node.target}_{uses[node.target] - 1}"
            traced.add_submodule(new_name, copy.deepcopy(traced.get_submodule(node.target)))
            node.target = new_name
    traced.recompile()
    return traced


def _producers(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[set[str], bool]:
    """Prunable layers whose output channels flow, channel-preserving, into ``node``'s input.

    Returns (layers, ok); ok is False when the path crosses an op that remaps channels
    (concatenation, reshapes, attention...), in which case the activation is not used.
    """
    found: set[str] = set()
    ok, stack, visited = True, list(node.all_input_nodes[:1]), set()
    while stack:
        n = stack.pop()
        if n in visited:
            continue
        visited.add(n)
        if n.op == "call_module":
            target = str(n.target)  # a call_module node's target is the module's qualified name
            m = modules[target]
            if isinstance(m, PRUNABLE):
                found.add(target)
                continue
            if isinstance(m, ACTIVATIONS):
                continue  # another activation: its layers are coupled to ours by the addition
            if isinstance(m, PASS_THROUGH):
                stack.extend(n.all_input_nodes[:1])
                continue
        elif n.op in ("call_function", "call_method") and n.target in ADDS + ("add", "add_"):
            stack.extend(n.all_input_nodes)
            continue
        ok = False
    return found, ok and bool(found)


def analyse(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Find the prunable groups of a prepared model and the activations that measure them.

    ``example_input`` is a small batch with the dataset's image shape; it is only traced.
    The model is not modified.
    """
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    layer_activation: dict[str, str] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], ACTIVATIONS):
            layers, ok = _producers(node, modules)
            for layer in layers if ok else ():
                layer_activation.setdefault(layer, str(node.target))
    output_node = next(n for n in traced.graph.nodes if n.op == "output")
    output_layers, _ = _producers(output_node, modules)

    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    graph = build_dependency_graph(model, example_input)
    ignored = [model.get_submodule(n) for n in output_layers]
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        group_layers = sorted({names[dep.target.module] for dep, _ in group
                               if graph.is_out_channel_pruning_fn(dep.handler)
                               and isinstance(dep.target.module, PRUNABLE)}, key=order.__getitem__)
        activations = tuple(sorted({layer_activation[n] for n in group_layers if n in layer_activation}))
        if not activations:
            continue
        first = model.get_submodule(group_layers[0])
        width = int(first.out_channels if isinstance(first, nn.Conv2d) else first.out_features)  # type: ignore[arg-type]
        groups.append(PruneGroup(group_layers[0], tuple(group_layers), activations, width))
    groups.sort(key=lambda g: order[g.name])
    return ModelGraph(tuple(groups), layer_activation, tuple(sorted(output_layers)))
