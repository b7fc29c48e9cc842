"""Every layer with parameters, as one forward pass runs it, and its MACs and params as functions of its
input and output widths: the per-layer half of the analytic cost model (``autoprune.measure.cost`` sums it
over a subnet's widths).

Units: MACs are the multiply-accumulates of one sample (FLOPs = 2 x MACs), params are parameter counts.
Each call of a layer counts (a block applied three times costs three times); convolutions of every
dimension, transposed ones too, linear layers, ``nn.MultiheadAttention`` (projections and the attention
matmuls) and recurrent layers (LSTM, GRU, RNN) are modelled. Anything else with parameters keeps a fixed
parameter count and no MACs; where such a layer does compute (a functional conv on a parameter, say), the
set-up check of ``PruningSpace`` finds the difference from the traced count (``autoprune.measure.count``)
and the space counts every candidate by tracing instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import UserError

CONV_TYPES = (nn.modules.conv._ConvNd,)  # Conv1d/2d/3d and their transposed forms
ROOT_TYPES = (*CONV_TYPES, nn.Linear)  # layers whose output channels a group is rooted at
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


@dataclass
class LayerShape:
    """What the cost model needs of one layer with parameters.

    ``kind``: conv | depthwise | linear | attention | recurrent | norm | param (a parameter outside any layer,
    such as a position embedding, that Torch-Pruning cuts with a group's channels) | other. ``in_dim``/``out_dim`` are the
    widths pruning changes (channels, features, an attention's embedding, a recurrent layer's input and
    output features). ``positions`` sums, over every call, the output positions (conv), tokens (linear,
    attention) or time steps (recurrent) of one sample.
    """

    kind: str
    in_dim: int = 0
    out_dim: int = 0
    kernel: float = 0  # weights per (input, output) channel pair; divided by the groups of a grouped conv
    positions: int = 0
    has_bias: bool = False
    fixed_params: int = 0  # parameters of layers not modelled by width
    source_positions: int = 0  # attention: keys per sample, summed over calls like positions
    pairs: int = 0  # attention: (query, key) pairs per sample, summed over calls
    calls: int = 0  # times the layer ran in the traced forward pass
    heads: int = 1  # attention heads; recurrent: gates (4 LSTM, 3 GRU, 1 RNN)
    layers: int = 1  # recurrent: stacked layers
    directions: int = 1  # recurrent: 2 when bidirectional
    # conv/linear: (in_dim, out_dim) -> a fresh layer of those widths and its input shape, for timing
    build: Callable[[int, int], tuple[nn.Module, tuple[int, ...]]] | None = None

    def macs(self, in_dim: int, out_dim: int) -> float:
        """Multiply-accumulates of the layer at these widths, one sample, every call summed (FLOPs = 2 x MACs).
        A float: a grouped conv's ``kernel`` is a fraction; the cost model rounds the sum over the network."""
        if self.kind in ("conv", "depthwise", "linear"):
            return self.kernel * self.positions * in_dim * out_dim
        if self.kind == "attention":  # q, k, v and output projections; q.k^T and attention.v
            return 2 * (self.positions + self.source_positions) * out_dim * out_dim + 2 * self.pairs * out_dim
        if self.kind == "recurrent":
            hidden = out_dim // self.directions
            inputs = in_dim
            total = 0
            for _ in range(self.layers):
                total += self.directions * self.heads * hidden * (inputs + hidden)
                inputs = out_dim
            return self.positions * total
        return 0

    def params(self, in_dim: int, out_dim: int) -> float:
        """Parameters of the layer at these widths (a float, as ``macs``)."""
        if self.kind in ("conv", "depthwise", "linear"):
            return self.kernel * in_dim * out_dim + (out_dim if self.has_bias else 0)
        if self.kind == "attention":
            return 4 * out_dim * out_dim + (4 * out_dim if self.has_bias else 0) + self.fixed_params
        if self.kind == "recurrent":
            hidden = out_dim // self.directions
            inputs, total = in_dim, 0
            for _ in range(self.layers):
                total += self.directions * self.heads * hidden * (inputs + hidden + (2 if self.has_bias else 0))
                inputs = out_dim
            return total
        if self.kind == "norm":
            return 2 * out_dim if self.has_bias else out_dim
        if self.kind == "param":  # a loose parameter cut with a group's channels (tensors per channel: kernel)
            return self.kernel * min(in_dim, out_dim)
        return self.fixed_params


def out_width(module: nn.Module) -> int:
    """Output channels (features) of a conv or linear layer."""
    return module.out_channels if isinstance(module, CONV_TYPES) else module.out_features


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel sees one input channel of its own (groups == in == out channels)."""
    return (isinstance(module, CONV_TYPES) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def built_dims(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """The (input, output) width of each conv or linear layer ``names`` of ``model`` as it is built, as
    ``CostModel.layer_dims`` gives them (a depthwise conv's input is 1): a model pruned by other means than its
    space's groups, in the latency table's terms. Raises ``KeyError`` for a name ``model`` lacks."""
    modules = dict(model.named_modules())
    dims = {}
    for name in names:
        module = modules[name]
        if is_depthwise(module):
            dims[name] = (1, module.out_channels)
        elif isinstance(module, CONV_TYPES):
            dims[name] = (module.in_channels, module.out_channels)
        else:
            dims[name] = (module.in_features, module.out_features)
    return dims


def trace_layers(model: nn.Module, example_input: torch.Tensor, names: dict[nn.Module, str],
                 logits: Callable[[object], torch.Tensor] | None = None,
                 ) -> tuple[dict[str, LayerShape], nn.Module | None]:
    """One forward pass recording every parameterised layer's shape, every call of it; also finds the classifier.

    The classifier is the last conv/linear executed whose output width equals the model's: its outputs are
    the classes, which must never be pruned. ``logits`` takes the model's output to its logits tensor.
    ``example_input`` is one sample, shape (1, ...), as the model takes it. Returns the shapes by module name
    (plus nothing for modules without parameters of their own) and the classifier module, or None where no
    layer's width equals the logits' dimension 1. Raises ``UserError`` when the model does not run on it.
    """
    shapes: dict[str, LayerShape] = {}
    executed: list[nn.Module] = []

    def hook(module: nn.Module, inputs, output) -> None:
        name = names[module]
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        if isinstance(module, ROOT_TYPES):
            executed.append(module)
        shape = _shape_of(module, inputs, out)
        if name in shapes:  # another call of the same layer: its work counts again
            shapes[name].positions += shape.positions
            shapes[name].source_positions += shape.source_positions
            shapes[name].pairs += shape.pairs
            shapes[name].calls += 1
        else:
            shape.calls = 1
            shapes[name] = shape

    handles = [m.register_forward_hook(hook) for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            out = model(example_input)
    except Exception as exc:
        raise UserError(f"the model does not run on the data's input shape {tuple(example_input.shape)}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    if logits is not None:
        out = logits(out)
    width = out.shape[1] if isinstance(out, torch.Tensor) and out.ndim >= 2 else None
    classifier = next((m for m in reversed(executed) if out_width(m) == width), None)
    return shapes, classifier


def _shape_of(module: nn.Module, inputs: tuple, out: torch.Tensor) -> LayerShape:
    inp = inputs[0]
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, CONV_TYPES):
        kernel = math.prod(module.kernel_size)
        # a transposed conv does its multiply-adds per input position, an ordinary one per output position
        positions = math.prod(inp.shape[2:] if module.transposed else out.shape[2:])
        bias = module.bias is not None
        depthwise = is_depthwise(module)
        spatial = tuple(inp.shape[2:])

        def build(in_dim: int, out_dim: int, m: nn.Module = module) -> tuple[nn.Module, tuple[int, ...]]:
            in_channels = out_dim if depthwise else in_dim
            groups = out_dim if depthwise else m.groups
            kwargs = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": groups,
                      "bias": m.bias is not None}
            if m.transposed:
                kwargs["output_padding"] = m.output_padding
            return type(m)(in_channels, out_dim, m.kernel_size, **kwargs), (in_channels, *spatial)

        if module.groups == 1:
            return LayerShape("conv", module.in_channels, module.out_channels, kernel, positions, bias, build=build)
        if depthwise:
            return LayerShape("depthwise", 1, module.out_channels, kernel, positions, bias, build=build)
        # other grouped convs: each output sees in/groups inputs; the group count stays
        return LayerShape("conv", module.in_channels, module.out_channels, kernel / module.groups, positions, bias,
                          build=build)
    if isinstance(module, nn.Linear):
        tokens = out.numel() // out.shape[-1]
        lead = tuple(inp.shape[1:-1])

        def build_linear(in_dim: int, out_dim: int, m: nn.Linear = module) -> tuple[nn.Module, tuple[int, ...]]:
            return nn.Linear(in_dim, out_dim, m.bias is not None), (*lead, in_dim)

        return LayerShape("linear", module.in_features, module.out_features, 1, tokens, module.bias is not None,
                          build=build_linear)
    if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
        first = 1 if module.batch_first or inp.dim() == 2 else 0  # the sequence dimension of a batched query
        key = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], torch.Tensor) else inp
        length = inp.shape[first] if inp.dim() == 3 else inp.shape[0]
        source = key.shape[first] if key.dim() == 3 else key.shape[0]
        extra = sum(p.numel() for p in (module.bias_k, module.bias_v) if p is not None)
        return LayerShape("attention", module.embed_dim, module.embed_dim, positions=length, source_positions=source,
                          pairs=length * source,
                          has_bias=module.in_proj_bias is not None, heads=module.num_heads, fixed_params=extra)
    gates = RNN_GATES.get(type(module))
    if gates is not None:
        if isinstance(inp, nn.utils.rnn.PackedSequence):
            return LayerShape("other", fixed_params=own)
        steps = inp.shape[1 if module.batch_first else 0] if inp.dim() == 3 else inp.shape[0]
        directions = 2 if module.bidirectional else 1
        if module.proj_size if isinstance(module, nn.LSTM) else False:
            return LayerShape("other", fixed_params=own)
        return LayerShape("recurrent", module.input_size, module.hidden_size * directions, positions=steps,
                          has_bias=module.bias, heads=gates, layers=module.num_layers, directions=directions)
    if isinstance(module, NORM_TYPES) and own:
        bias = getattr(module, "bias", None) is not None
        width = own // (2 if bias else 1)
        return LayerShape("norm", width, width, has_bias=bias)
    return LayerShape("other", fixed_params=own)
