"""Torch-Pruning's dependency graph, built so that it couples the channels a model really couples.

Three things the plain ``build_dependency`` gets wrong on models people bring, fixed here where the graph
is made (so pruning, ranking and the cost model all see the same graph):

- **Frozen parameters.** The graph is traced through autograd: a layer whose parameters have
  ``requires_grad`` off (a frozen stem) leaves no trace and is silently never pruned. Every parameter
  requires grad while the graph is built.
- **Channels that are not coupled.** A 1-channel map broadcast-multiplied into C channels (a spatial
  attention gate) and a reduction over the channels (``x.mean(1, keepdim=True)``) are taken for
  element-wise ops, which couples the C channels with the 1-channel layer. The edges that carry no
  channel (a broadcast from one channel, a reduction to one channel) are cut, by the shapes autograd
  records of each op's output. An op that changes the channel count in any other way (a
  ``PixelShuffle``, a channel shuffle's transpose) is reported in ``TracedGraph.changes`` so that the
  space refuses the groups through it.
- **Per-channel buffers.** A module holding per-channel tensors that Torch-Pruning has no pruner for (a
  frozen BatchNorm keeps its statistics and affine terms as buffers) must be cut with its channels:
  ``PerChannelPruner`` slices every 1-D tensor of the channel count.

The surgery itself is here too: ``apply_kept`` prunes a model to the channel indices each group keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from math import lcm
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn

from autoprune.measure.layers import CONV_TYPES, is_depthwise, out_width


class PerChannelPruner(tp.pruner.function.BasePruningFunc):
    """Cuts a module's per-channel tensors (every 1-D parameter and buffer as long as its channel count)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove channels ``idxs`` of ``layer`` in place and return it: every 1-D parameter and buffer of its own
        as long as its channel count keeps only the other channels (a parameter keeps its ``requires_grad``), and
        an int ``num_features``, ``num_channels`` or ``channels`` becomes the new count. Input channels alike."""
        width = self.get_out_channels(layer)
        drop = {int(i) for i in idxs}
        keep = torch.tensor([i for i in range(width) if i not in drop], dtype=torch.long)
        for name, tensor in list(layer.named_parameters(recurse=False)) + list(layer.named_buffers(recurse=False)):
            if tensor.dim() == 1 and tensor.numel() == width:
                kept = tensor.data.index_select(0, keep.to(tensor.device)).clone()
                if isinstance(tensor, nn.Parameter):
                    setattr(layer, name, nn.Parameter(kept, requires_grad=tensor.requires_grad))
                else:
                    setattr(layer, name, kept)
        for attribute in ("num_features", "num_channels", "channels"):
            if isinstance(getattr(layer, attribute, None), int):
                setattr(layer, attribute, width - len(drop))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int | None:
        """``layer``'s channel count (``per_channel_width``), in and out alike; None for any other module."""
        return per_channel_width(layer)

    get_in_channels = get_out_channels


def per_channel_width(module: nn.Module) -> int | None:
    """The channel count of a leaf module whose own tensors are all 1-D of one length (>= 2) with at
    least one buffer among them; None for any other module."""
    if any(True for _ in module.children()):
        return None
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    if not any(True for _ in module.buffers(recurse=False)) or not tensors:
        return None
    lengths = {t.numel() for t in tensors if t.dim() == 1}
    if len(lengths) != 1 or any(t.dim() != 1 for t in tensors if t.numel() > 1):
        return None
    width = lengths.pop()
    return width if width >= 2 else None


def _shape(grad_fn) -> tuple[int, ...] | None:
    """The shape of the tensor an autograd node's op made (its first output), from autograd's own metadata."""
    try:
        return tuple(grad_fn._input_metadata[0].shape)
    except (AttributeError, IndexError, TypeError):
        return None


class TracedGraph(NamedTuple):
    """What ``build_graph`` returns: Torch-Pruning's dependency ``graph`` (DepGraph, Fang et al. 2023) with the
    edges that carry no channel cut; ``changes``, the ops that change a channel count in a way the graph
    cannot map (node -> description), whose groups the space refuses; and ``outputs``, the nodes whose results
    the model returns."""

    graph: tp.DependencyGraph
    changes: dict[object, str]  # node -> how it changes the channel count ("PixelShuffleBackward0 (32 -> 8 channels)")
    outputs: set  # the nodes whose results the model returns (every output: logits, auxiliary heads, ...)


@functools.cache
def _registered_types() -> tuple[type, ...]:
    """The module types Torch-Pruning has pruners of."""
    return tuple(tp.ops.type2class(t) for t in tp.DependencyGraph().REGISTERED_PRUNERS)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> TracedGraph:
    """The dependency graph of ``model`` traced on ``example_input`` through every output it returns, the ops
    that change a channel count in a way Torch-Pruning cannot map, and the nodes that make the outputs."""
    returned: list = []

    def record_outputs(out):
        returned.extend(t.grad_fn for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor))
        return out

    custom = {type(m) for m in model.modules()
              if not isinstance(m, _registered_types()) and per_channel_width(m) is not None}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        # Tracing needs autograd: it must not run under no_grad / inference_mode.
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, output_transform=record_outputs, verbose=False,
                customized_pruners={t: PerChannelPruner() for t in custom})
    finally:
        for p in frozen:
            p.requires_grad_(False)
    outputs = {node for node in graph.module2node.values()
               if node.grad_fn in returned or node.type == tp.ops.OPTYPE.OUTPUT}
    return TracedGraph(graph, _uncouple(graph), outputs)


# element-wise ops that broadcast one channel over many, and reductions over the channels
_BROADCASTS = ("Mul", "Add", "Sub", "Div", "Where", "Maximum", "Minimum")
_REDUCTIONS = ("Mean", "Sum", "Amax", "Amin", "Max", "Min", "Norm", "Std", "Var", "Logsumexp", "Prod")
# ops that move channels between positions (or mix them, a functional conv), which the graph takes for element-wise
_REMIXES = ("PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Convolution")
_REMIXES_5D = ("Transpose", "Permute")  # a channel shuffle: view (N, g, C/g, H, W), swap g and C/g


def _uncouple(graph: tp.DependencyGraph) -> dict[object, str]:
    """Cut the graph's edges into element-wise ops that carry no channel; return the other ops that change
    the channels in ways Torch-Pruning cannot follow, keyed by node, described."""
    changes: dict[object, str] = {}
    for node in list(graph.module2node.values()):
        if node.type != tp.ops.OPTYPE.ELEMENTWISE:
            continue
        out = _shape(node.grad_fn)
        if out is None or len(out) < 2 or len(out) == 3:  # (N, L, C) or (N, C, L): no telling which is channels
            continue
        op = node.grad_fn.name()
        for source in list(node.inputs):
            shape = _shape(source.grad_fn)
            if shape is None or len(shape) != len(out) or shape[1] == out[1]:
                continue
            if (shape[1] == 1 and op.startswith(_BROADCASTS)) or (out[1] == 1 and op.startswith(_REDUCTIONS)):
                _cut(node, source)
            elif op.startswith(_REMIXES) or (len(out) == 5 and op.startswith(_REMIXES_5D)):
                changes[node] = f"{op} ({shape[1]} -> {out[1]} channels)"
    return changes


def _cut(node, source) -> None:
    node.inputs.remove(source)
    source.outputs.remove(node)
    node.dependencies = [d for d in node.dependencies if d.target is not source]
    source.dependencies = [d for d in source.dependencies if d.target is not node]


def channel_units(graph: tp.DependencyGraph, root: nn.Module, channels: int) -> list[list[int]]:
    """The root's output channels that are pruned together (each channel alone, or pairs that
    ``torch.chunk`` halves gate together, or blocks a reshape into channels moves together), as lists
    of channel indices, in order of their first channel."""
    handler = graph.get_pruner_of_module(root).prune_out_channels
    first = graph.get_pruning_group(root, handler, idxs=[0])
    if len(first[0].idxs) == 1:  # the common case: one channel is one unit
        return [[i] for i in range(channels)]
    units, seen = [], set()
    for i in range(channels):
        if i in seen:
            continue
        unit = sorted({int(j) for j in graph.get_pruning_group(root, handler, idxs=[i])[0].idxs})
        seen.update(unit)
        units.append(unit)
    return units


def width_step(tp_group, names: dict[nn.Module, str]) -> tuple[int, list[str]]:
    """The multiple every width of the group must be, from the layers it touches (GroupNorm groups, attention
    heads), and why."""
    step, why = 1, []
    for dep, idxs in tp_group:
        module = dep.target.module
        if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            rule = module.num_groups
            why.append(f"GroupNorm '{names.get(module)}' has {rule} groups")
        elif isinstance(module, nn.MultiheadAttention) and module.num_heads > 1:
            rule = module.num_heads
            why.append(f"attention '{names.get(module)}' has {rule} heads")
        else:
            continue
        step = lcm(step, rule)
    return step, why


def grouped_conv_units(tp_group, names: dict[nn.Module, str],
                       channels: int) -> tuple[list[list[int]] | None, str | None]:
    """Units that keep a grouped (not depthwise) convolution's groups even, and a rule for why; (None, None)
    where the group touches no grouped convolution; (None, reason) where it touches one in a way that cannot
    be kept even.

    A conv with g groups needs the same number of channels cut from each of its groups: a unit is one channel
    from each group (channels p, p + C/g, p + 2C/g, ...), for a group whose channels reach the conv one to one.
    """
    grouped = [(dep, idxs) for dep, idxs in tp_group
               if isinstance(dep.target.module, CONV_TYPES) and dep.target.module.groups > 1
               and not is_depthwise(dep.target.module)]
    if not grouped:
        return None, None
    counts = {dep.target.module.groups for dep, _ in grouped}
    name = names.get(grouped[0][0].target.module)
    if len(counts) > 1 or any(sorted(int(i) for i in idxs) != list(range(channels)) for _, idxs in grouped):
        return None, (f"touches a grouped convolution ('{name}', groups={grouped[0][0].target.module.groups}) "
                      "whose groups its channels do not reach one to one")
    g = counts.pop()
    per_group = channels // g
    units = [[p + k * per_group for k in range(g)] for p in range(per_group)]
    return units, f"grouped convolution '{name}' has {g} groups"


def searchable_units(graph: tp.DependencyGraph, root: nn.Module, tp_group, names: dict[nn.Module, str],
                     channels: int) -> tuple[list[list[int]] | None, str | None, str | None]:
    """The group's channel units (``channel_units``, or the balanced ones a grouped conv needs), the grouped
    conv's rule (None where there is none), and why the group cannot be searched (None when it can; the
    units are None then)."""
    units = channel_units(graph, root, channels)
    balanced, grouped_rule = grouped_conv_units(tp_group, names, channels)
    if grouped_rule is not None:
        if balanced is None:
            return None, None, grouped_rule
        if len(units) != channels:
            return None, None, f"{grouped_rule}, and its channels are pruned in blocks as well"
        units = balanced
    if len({len(u) for u in units}) > 1:
        return None, None, "its channels are pruned together in blocks of unequal size"
    if len(units) < 2:
        return None, None, ("a single output channel" if channels == 1
                            else f"its {channels} output channels are pruned as one unit")
    return units, grouped_rule, None


def returned_shapes(model: nn.Module, example_input: torch.Tensor) -> list[tuple[int, ...]]:
    """The shape of every tensor ``model`` returns (in eval mode): pruning must change none of them, also where
    autograd cannot see an output's link to a layer (a detached embedding)."""
    with torch.no_grad():
        out = model.eval()(example_input)
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor)]


def apply_kept(
    model: nn.Module,
    example_input: torch.Tensor,
    kept: Mapping[str, list[int]],
    channels: Mapping[str, int] | None = None,
) -> nn.Module:
    """Prune ``model`` in place so that each named group keeps exactly the given channel indices; returns it.

    ``kept``: group (root module) name -> indices of the output channels it keeps, of ``model`` as it is.
    Groups are looked up by root-module name on THIS model, so the dependency graph's module keys
    are the ones being pruned. Parameters frozen before stay frozen. Raises ``KeyError`` for a name that is
    not a module, ``ValueError`` where a root's width is not ``channels[name]``, and ``RuntimeError`` where
    a root is left with another width than asked (checked after pruning).
    """
    graph = build_graph(model, example_input).graph
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    modules = dict(model.named_modules())
    for name, keep in kept.items():
        if name not in modules:
            raise KeyError(f"group root '{name}' is not a module of this model")
        root = modules[name]
        width = out_width(root)
        if channels is not None and channels[name] != width:
            raise ValueError(f"group '{name}' has {width} channels, expected {channels[name]}")
        keep_set = set(keep)
        drop = [i for i in range(width) if i not in keep_set]
        if not drop:
            continue
        handler = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, handler, idxs=drop).prune()
    for name, p in model.named_parameters():  # Torch-Pruning makes every pruned parameter trainable
        if name in frozen:
            p.requires_grad_(False)
    for name, keep in kept.items():
        got = out_width(modules[name])
        if got != len(keep):
            raise RuntimeError(f"pruning '{name}' left {got} channels, asked for {len(keep)}")
    return model
