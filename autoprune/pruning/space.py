"""The PruningSpace: a model's prunable groups, one ratio each, and the map from ratios to a subnet.

Structure comes from Torch-Pruning's dependency graph; what we add is stable names (the module
path of each group's root layer), ratios keyed by those names and applied to the copy being
pruned, a channel ranking computed once per criterion (or handed over ready-made), an exact
analytic cost model so a candidate's MACs and params are known before anything is pruned, and a
check that the pruned widths are the ones asked for.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError
from autoprune.measure.latency import LatencyTable
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.criteria import Batch, Criterion, CriterionContext, get_criterion

_ROOT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates of conv and linear layers (FLOPs = 2 x MACs), learnable parameters and,
    where a latency table is attached to the space, the predicted latency."""

    macs: int
    params: int
    latency_ms: float | None = None  # predicted, where a latency table is attached


@dataclass
class Group:
    name: str
    channels: int
    members: list[str]
    low: float
    high: float
    order: list[int] = field(repr=False, default_factory=list)  # least important channel first
    # the criterion's score of each channel (higher = keep); None where the order was handed over
    importance: list[float] | None = field(repr=False, default=None)


@dataclass
class _LayerShape:
    """What the cost model needs of one layer with parameters."""

    kind: str  # conv | depthwise | linear | norm | other
    in_dim: int = 0
    out_dim: int = 0
    kernel: float = 0  # weights per (input, output) channel pair; divided by the groups of a grouped conv
    positions: int = 0  # output positions (conv) or tokens (linear) per image
    has_bias: bool = False
    fixed_params: int = 0  # parameters of layers not modelled by width
    # conv/linear: (in_dim, out_dim) -> a fresh layer of those widths and its input shape, for timing
    build: Callable[[int, int], tuple[nn.Module, tuple[int, ...]]] | None = None


class PruningSpace:
    """Prunable groups of ``model`` and the ratio -> subnet map.

    ``model`` is never modified; every subnet is pruned on a deep copy. ``batches`` are training
    (images, labels) batches for the data-driven criteria. ``orders`` are channel rankings computed
    before (another space's ``orders``): given them, the criterion is not run, so a remote worker
    rebuilds the space its driver ranked without the data or the time the ranking took.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        config: SpaceConfig | None = None,
        *,
        criterion: str = "l1",
        seed: int = 0,
        batches: Sequence[Batch] | None = None,
        orders: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.config = config or SpaceConfig()
        self.criterion = criterion
        self.seed = seed
        self.model = copy.deepcopy(model).cpu().eval()
        self.example_input = example_input[:1].detach().cpu()
        names = {m: n for n, m in self.model.named_modules()}
        self._shapes, classifier = _trace_shapes(self.model, self.example_input, names)
        ignored = [m for m in (classifier,) if m is not None]
        self.classifier = names.get(classifier)  # never pruned: its outputs are the classes
        graph = _build_graph(self.model, self.example_input)
        tic = time.perf_counter()
        score = None if orders is not None else _scorer(criterion, CriterionContext(self.model, batches, seed))
        self.ranking_seconds = time.perf_counter() - tic  # the criterion's pass over the data, then each group's ranking
        self.groups: list[Group] = []
        self.unprunable: dict[str, str] = {}
        # group name -> [(module name, "in"/"out", units per channel)]
        self._effects: dict[str, list[tuple[str, str, int]]] = {}
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
            root = tp_group[0].dep.target.module
            name = names[root]
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.skip):
                continue
            if any(_is_grouped(dep.target.module) for dep, _ in tp_group):
                # Torch-Pruning cannot cut the channels of a grouped (not depthwise) conv cleanly
                self.unprunable[name] = "touches a grouped convolution"
                continue
            channels = len(tp_group[0].idxs)
            low, high = self.config.bounds_for(name)
            effects, members = [], []
            for dep, idxs in tp_group:
                target = names.get(dep.target.module)
                if target is None or target not in self._shapes:
                    continue
                dim = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
                effects.append((target, dim, len(idxs) // channels))
                if dim == "out" and target not in members:
                    members.append(target)
            group = Group(name, channels, members, low, high)
            if orders is None:
                tic = time.perf_counter()
                group.order, group.importance = _ranked(score, tp_group, criterion, name)
                self.ranking_seconds += time.perf_counter() - tic
            else:
                group.order = _given_order(orders, name, channels)
            self.groups.append(group)
            self._effects[name] = effects
        if not self.groups:
            detail = "; ".join(f"{k}: {v}" for k, v in self.unprunable.items())
            raise UserError(
                "the model has no prunable groups (no conv/linear layers left after skips)"
                + (f" ({detail})" if detail else "")
            )
        self._by_name = {g.name: g for g in self.groups}
        unknown = sorted(set(orders or {}) - set(self._by_name))
        if unknown:
            raise ValueError(f"orders given for group(s) {unknown} that this space does not have")
        self.latency: LatencyTable | None = None
        self.base_cost = self.cost({})

    def rerank(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> None:
        """Take ``model``'s weights (this space's architecture, trained further: after sparsity training,
        say) and rank every group's channels again on them. Widths, costs and bounds stay as they are."""
        self.model = copy.deepcopy(model).cpu().eval()
        names = {m: n for n, m in self.model.named_modules()}
        modules = dict(self.model.named_modules())
        ignored = [modules[self.classifier]] if self.classifier is not None else []
        graph = _build_graph(self.model, self.example_input)
        score = _scorer(self.criterion, CriterionContext(self.model, batches, self.seed))
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES):
            group = self._by_name.get(names[tp_group[0].dep.target.module])
            if group is not None:
                group.order, group.importance = _ranked(score, tp_group, self.criterion, group.name)

    # --- ratios -> widths and cost ---------------------------------------------------------

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def kept_channels(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Channels each group keeps at ``ratios`` (missing groups keep all)."""
        self._check_names(ratios)
        step, floor = self.config.round_to, self.config.min_channels
        kept = {}
        for g in self.groups:
            ratio = float(ratios.get(g.name, 0.0))
            if ratio <= 0:
                kept[g.name] = g.channels
                continue
            k = g.channels * (1.0 - ratio)
            k = int(max(step, round(k / step) * step)) if step > 1 else round(k)
            kept[g.name] = max(min(k, g.channels), min(floor, g.channels), 1)
        return kept

    def cost(self, ratios: Mapping[str, float]) -> Cost:
        """Exact MACs and params of the subnet at ``ratios``, without pruning anything."""
        return self.cost_of_widths(self.kept_channels(ratios))

    def cost_of_widths(self, kept: Mapping[str, int]) -> Cost:
        dims = self._layer_dims(kept)
        macs = params = 0
        for module, s in self._shapes.items():
            in_dim, out_dim = dims[module]
            if s.kind in ("conv", "depthwise", "linear"):
                macs += s.kernel * s.positions * in_dim * out_dim
                params += s.kernel * in_dim * out_dim + (out_dim if s.has_bias else 0)
            elif s.kind == "norm":
                params += 2 * out_dim if s.has_bias else out_dim
            params += s.fixed_params
        latency = self.latency.predict(dims) if self.latency is not None else None
        return Cost(round(macs), round(params), latency)

    def _layer_dims(self, kept: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """(input, output) width of every parameterised layer when the groups keep ``kept``."""
        in_cut: dict[str, int] = {}
        out_cut: dict[str, int] = {}
        for name, width in kept.items():
            removed = self._by_name[name].channels - width
            if removed <= 0:
                continue
            for module, dim, units in self._effects[name]:
                target = out_cut if dim == "out" else in_cut
                target[module] = target.get(module, 0) + removed * units
        dims = {}
        for module, s in self._shapes.items():
            out_dim = s.out_dim - out_cut.get(module, 0)
            dims[module] = (1 if s.kind == "depthwise" else s.in_dim - in_cut.get(module, 0), out_dim)
        return dims

    def attach_latency(self, table: LatencyTable, measured_base_ms: float) -> None:
        """Predict latency in every ``cost``, calibrated on the unpruned network's measurement."""
        table.calibrate(self._layer_dims({}), measured_base_ms)
        self.latency = table
        self.base_cost = self.cost({})

    def latency_layers(self) -> dict[str, Callable[[int, int], tuple[nn.Module, tuple[int, ...]]]]:
        """Builders of the layers a latency table times: every conv and linear layer."""
        return {name: s.build for name, s in self._shapes.items() if s.build is not None}

    def uniform_ratios(self, ratio: float) -> dict[str, float]:
        return {g.name: min(max(ratio, g.low), g.high) for g in self.groups}

    def smallest_cost(self) -> Cost:
        return self.cost({g.name: g.high for g in self.groups})

    # --- pruning -----------------------------------------------------------------------------

    def kept_indices(self, ratios: Mapping[str, float]) -> dict[str, list[int]]:
        """Indices of the channels each group keeps, by the criterion's ranking."""
        kept = self.kept_channels(ratios)
        return {g.name: sorted(g.order[g.channels - kept[g.name] :]) for g in self.groups}

    def prune(
        self, ratios: Mapping[str, float], weights: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[nn.Module, dict[str, list[int]]]:
        """A pruned deep copy of the model at ``ratios`` and the kept channel indices per group.

        ``weights``, a state dict of the unpruned model (its initialisation, say), replaces the
        trained weights before pruning: the channels kept are still the ones the trained model's
        ranking chose, so the subnet has the same structure and holds those weights' values at them.
        """
        kept = self.kept_indices(ratios)
        subnet = copy.deepcopy(self.model)
        if weights is not None:
            subnet.load_state_dict(weights)
        apply_kept(subnet, self.example_input, kept, {g.name: g.channels for g in self.groups})
        return subnet, kept

    def prune_further(
        self, subnet: nn.Module, current: Mapping[str, list[int]], kept: Mapping[str, list[int]]
    ) -> nn.Module:
        """Prune ``subnet``, this space's model already pruned to keep ``current``, in place down to ``kept``.

        Both are channel indices of the unpruned model (``kept_indices``), and each group's ``kept``
        must lie within its ``current``. Pruning keeps the surviving channels in their order, so
        channel j of the subnet is original channel ``current[name][j]``: that map turns ``kept``
        into the subnet's own indices. The weights of the channels kept carry over, which is what an
        iterative schedule that fine-tunes between its steps needs.
        """
        relative = {}
        for g in self.groups:
            position = {channel: j for j, channel in enumerate(current[g.name])}
            outside = sorted(set(kept[g.name]) - position.keys())
            if outside:
                raise ValueError(f"group '{g.name}': channels {outside} are not in the subnet any more")
            relative[g.name] = sorted(position[channel] for channel in kept[g.name])
        example = self.example_input.to(next(subnet.parameters()).device)
        return apply_kept(subnet, example, relative, {name: len(channels) for name, channels in current.items()})

    def readers(self, name: str) -> set[str]:
        """Layers that read the group's channels as their inputs (the 'next layers')."""
        return {module for module, dim, _ in self._effects[name] if dim == "in"}

    def narrow(self, highs: Mapping[str, float]) -> None:
        """Lower the upper ratio bounds of the named groups (never below their lower bounds)."""
        self._check_names(highs)
        for name, high in highs.items():
            group = self._by_name[name]
            group.high = max(group.low, min(group.high, float(high)))

    @property
    def orders(self) -> dict[str, list[int]]:
        """Each group's channel ranking, least important first; ``orders=`` rebuilds the space from it."""
        return {g.name: list(g.order) for g in self.groups}

    def describe(self) -> list[dict]:
        return [
            {"name": g.name, "channels": g.channels, "low": g.low, "high": g.high, "members": g.members}
            for g in self.groups
        ]

    def _check_names(self, ratios: Mapping[str, float]) -> None:
        unknown = [k for k in ratios if k not in self._by_name]
        if unknown:
            raise KeyError(f"unknown group(s) {unknown}; groups are {self.group_names}")


def apply_kept(
    model: nn.Module,
    example_input: torch.Tensor,
    kept: Mapping[str, list[int]],
    channels: Mapping[str, int] | None = None,
) -> nn.Module:
    """Prune ``model`` in place so that each named group keeps exactly the given channel indices.

    Groups are looked up by root-module name on THIS model, so the dependency graph's module keys
    are the ones being pruned. The widths are checked afterwards.
    """
    graph = _build_graph(model, example_input)
    modules = dict(model.named_modules())
    for name, keep in kept.items():
        if name not in modules:
            raise KeyError(f"group root '{name}' is not a module of this model")
        root = modules[name]
        width = _out_width(root)
        if channels is not None and channels[name] != width:
            raise ValueError(f"group '{name}' has {width} channels, expected {channels[name]}")
        keep_set = set(keep)
        drop = [i for i in range(width) if i not in keep_set]
        if not drop:
            continue
        handler = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, handler, idxs=drop).prune()
    for name, keep in kept.items():
        got = _out_width(modules[name])
        if got != len(keep):
            raise RuntimeError(f"pruning '{name}' left {got} channels, asked for {len(keep)}")
    return model


def _scorer(criterion: str, context: CriterionContext) -> Criterion:
    try:
        return get_criterion(criterion, context)
    except UserError:
        raise
    except Exception as exc:  # a model the data-driven pass cannot run (e.g. its output is no logits)
        raise UserError(f"criterion '{criterion}' cannot score this model on the training batches: {exc}") from exc


def _ranked(score: Criterion, tp_group: tp.dependency.group.Group, criterion: str,
            name: str) -> tuple[list[int], list[float]]:
    """The group's channels, least important first by ``score``, and the score of each."""
    try:
        with torch.no_grad():
            importance = score(tp_group).detach().float().cpu()
    except Exception as exc:  # a layer pattern the criterion cannot rank
        raise UserError(f"criterion '{criterion}' cannot rank the channels of group '{name}': {exc}") from exc
    return torch.argsort(importance, stable=True).tolist(), importance.tolist()


def _given_order(orders: Mapping[str, Sequence[int]], name: str, channels: int) -> list[int]:
    """The ready-made ranking of group ``name``, checked to rank each of its channels once."""
    if name not in orders:
        raise ValueError(f"no channel order given for group '{name}'")
    order = [int(i) for i in orders[name]]
    if sorted(order) != list(range(channels)):
        raise ValueError(f"the order given for group '{name}' does not rank each of its {channels} channels once")
    return order


def _is_grouped(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and not (module.groups == module.in_channels == module.out_channels)
    )


def _out_width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    # Tracing needs autograd: it must not run under no_grad / inference_mode.
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _trace_shapes(
    model: nn.Module, example_input: torch.Tensor, names: dict[nn.Module, str]
) -> tuple[dict[str, _LayerShape], nn.Module | None]:
    """One forward pass recording every parameterised layer's shape; also finds the classifier.

    The classifier is the last conv/linear executed whose output width equals the model's: its
    outputs are the classes, which must never be pruned.
    """
    shapes: dict[str, _LayerShape] = {}
    executed: list[nn.Module] = []

    def hook(module: nn.Module, inputs, output) -> None:
        name = names[module]
        if name in shapes or not isinstance(output, torch.Tensor):
            return
        if isinstance(module, _ROOT_TYPES):
            executed.append(module)
        shapes[name] = _shape_of(module, inputs[0], output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            out = model(example_input)
    except Exception as exc:
        raise UserError(f"the model does not run on the data's input shape {tuple(example_input.shape)}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    width = out.shape[1] if isinstance(out, torch.Tensor) and out.ndim >= 2 else None
    classifier = next((m for m in reversed(executed) if _out_width(m) == width), None)
    return shapes, classifier


def _shape_of(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> _LayerShape:
    own = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        positions = math.prod(out.shape[2:])
        bias = module.bias is not None
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        spatial = tuple(inp.shape[2:])

        def build(in_dim: int, out_dim: int, m: nn.Conv2d = module) -> tuple[nn.Module, tuple[int, ...]]:
            in_channels = out_dim if depthwise else in_dim
            groups = out_dim if depthwise else m.groups
            layer = nn.Conv2d(in_channels, out_dim, m.kernel_size, m.stride, m.padding, m.dilation, groups,
                              m.bias is not None)
            return layer, (in_channels, *spatial)

        if module.groups == 1:
            return _LayerShape("conv", module.in_channels, module.out_channels, kernel, positions, bias, build=build)
        if depthwise:
            return _LayerShape("depthwise", 1, module.out_channels, kernel, positions, bias, build=build)
        # other grouped convs: each output sees in/groups inputs; the group count stays
        return _LayerShape("conv", module.in_channels, module.out_channels, kernel / module.groups, positions, bias,
                           build=build)
    if isinstance(module, nn.Linear):
        tokens = out.numel() // out.shape[-1]
        lead = tuple(inp.shape[1:-1])

        def build_linear(in_dim: int, out_dim: int, m: nn.Linear = module) -> tuple[nn.Module, tuple[int, ...]]:
            return nn.Linear(in_dim, out_dim, m.bias is not None), (*lead, in_dim)

        return _LayerShape("linear", module.in_features, module.out_features, 1, tokens, module.bias is not None,
                           build=build_linear)
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
        bias = getattr(module, "bias", None) is not None
        width = own // (2 if bias else 1)
        return _LayerShape("norm", width, width, has_bias=bias)
    return _LayerShape("other", fixed_params=own)
