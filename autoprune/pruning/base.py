"""What every pruning space is (``Space``) and its groups (``Group``).

A space maps ratios (group name -> share of the group's units to remove) to widths (units kept), widths to
a ``Cost`` (its ``CostModel``, ``autoprune.measure.cost``: MACs of one sample, FLOPs = 2 x MACs, params and
predicted latency in ms) and ratios to a pruned copy of the model. The search, the runners, fine-tuning
and the benches use only this interface. ``autoprune.pruning.space.PruningSpace`` prunes channels,
``autoprune.pruning.weights.WeightSpace`` single weights.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.measure.cost import Cost, CostModel
from autoprune.measure.latency import LatencyTable
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.criteria import Batch

__all__ = ["Group", "Space"]


@dataclass
class Group:
    """One searched group: a ratio in [``low``, ``high``] removes that share of its ``channels``, its units
    (output channels in a ``PruningSpace``, weights in a ``WeightSpace``), least important first."""

    name: str
    channels: int
    members: list[str]
    low: float
    high: float
    order: list[int] = field(repr=False, default_factory=list)  # least important unit first
    # the criterion's score of each channel (higher = keep); None where the order was handed over
    importance: list[float] | None = field(repr=False, default=None)
    step: int = 1  # every width is a multiple of it: its channel units, the layers' rules and round_to
    unit: int = 1  # channels pruned together as one (2 for torch.chunk halves, r*r for a reshape into channels)
    rules: list[str] = field(default_factory=list)  # why the step is what it is
    # the widths the target runs efficiently (``autoprune.measure.predictor.efficient_widths``), ascending and
    # ending at ``channels``; None: every multiple of ``step``
    widths: list[int] | None = None


class Space(ABC):
    """A model's searched groups, one ratio each, and the maps ratios -> widths -> ``Cost`` -> subnet.

    Ratios: group name -> share of the group's units to remove, within the group's [low, high]; a group
    left out is not pruned. Widths: group name -> units kept (``kept_channels``). ``model`` is a deep copy
    on the CPU in eval mode and is never modified; every subnet is pruned on a copy of it.
    ``example_input`` is one sample, shape (1, ...).

    A space subclass calls ``Space.__init__`` first, then sets its groups (``_set_groups``) and its cost
    model ``costs``, and gives ``kept_indices``, ``kept``, ``prune``, ``prune_further``, ``readers``,
    ``rerank`` and ``orders``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, config: SpaceConfig, *, criterion: str,
                 seed: int) -> None:
        self.config = config
        self.criterion = criterion
        self.seed = seed
        self.model = copy.deepcopy(model).cpu().eval()
        self.example_input = example_input[:1].detach().cpu()
        self.groups: list[Group] = []
        self._by_name: dict[str, Group] = {}
        self.classifier: str | None = None  # a layer never pruned: its outputs are the classes
        self.unprunable: dict[str, str] = {}  # layer name -> why its units are never pruned
        self.costs: CostModel  # set by the subclass, once its groups are known

    def _set_groups(self, groups: list[Group]) -> None:
        self.groups = groups
        self._by_name = {g.name: g for g in groups}

    # --- ratios -> widths ------------------------------------------------------------------------

    @property
    def group_names(self) -> list[str]:
        """The searched groups' names, in the order of ``groups``."""
        return [g.name for g in self.groups]

    def kept_channels(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Units (channels, or weights in a ``WeightSpace``) each group keeps at ``ratios``; missing groups
        keep all: a multiple of the group's step, at least one step and ``min_channels``, snapped to the nearest of
        the group's efficient ``widths`` where it has them (``keep_widths``). Raises
        ``KeyError`` for a name that is not a group."""
        self._check_names(ratios)
        kept = {}
        for g in self.groups:
            ratio = float(ratios.get(g.name, 0.0))
            if ratio <= 0:
                kept[g.name] = g.channels
                continue
            floor = -(-min(self.config.min_channels, g.channels) // g.step) * g.step  # min_channels, rounded up
            k = min(max(g.step, floor, round(g.channels * (1.0 - ratio) / g.step) * g.step), g.channels)
            kept[g.name] = k if g.widths is None else min(g.widths, key=lambda w: (abs(w - k), -w))
        return kept

    def keep_widths(self, widths: Mapping[str, list[int]]) -> None:
        """Restrict each named group to the given kept widths (ascending; the group's full width is added):
        ``kept_channels`` then snaps a ratio's width to the nearest of them, the wider on a tie. Raises
        ``KeyError`` for a name that is not a group."""
        self._check_names(widths)
        for name, allowed in widths.items():
            group = self._by_name[name]
            group.widths = sorted({*map(int, allowed), group.channels})

    @contextlib.contextmanager
    def widths_of(self, widths: Mapping[str, list[int]] | None) -> Iterator[None]:
        """Within the block, the groups keep ``widths`` (as ``keep_widths``; None: every width) in place of their
        own: the space as another run restricted it (its latency.json). Their own are restored after."""
        own = {g.name: g.widths for g in self.groups}
        for g in self.groups:
            g.widths = None
        try:
            if widths is not None:
                self.keep_widths(widths)
            yield
        finally:
            for g in self.groups:
                g.widths = own[g.name]

    def uniform_ratios(self, ratio: float) -> dict[str, float]:
        """``ratio`` for every group, clipped to each group's bounds."""
        return {g.name: min(max(ratio, g.low), g.high) for g in self.groups}

    def narrow(self, highs: Mapping[str, float]) -> None:
        """Lower the upper ratio bounds of the named groups (never below their lower bounds). Raises
        ``KeyError`` for a name that is not a group."""
        self._check_names(highs)
        for name, high in highs.items():
            group = self._by_name[name]
            group.high = max(group.low, min(group.high, float(high)))

    def describe(self) -> list[dict]:
        """Each group as config.yaml and the report list it: name, channels (units), step, bounds, members."""
        return [
            {"name": g.name, "channels": g.channels, "step": g.step, "low": g.low, "high": g.high,
             "members": g.members, **({"rules": g.rules} if g.rules else {}),
             **({"widths": g.widths} if g.widths is not None else {})}
            for g in self.groups
        ]

    def _check_names(self, ratios: Mapping[str, float]) -> None:
        unknown = [k for k in ratios if k not in self._by_name]
        if unknown:
            raise KeyError(f"unknown group(s) {unknown}; groups are {self.group_names}")

    # --- widths -> cost (the space's CostModel) ---------------------------------------------------

    def cost(self, ratios: Mapping[str, float]) -> Cost:
        """MACs (one sample; FLOPs = 2 x MACs), params and, with a latency table, the predicted ms of the
        subnet at ``ratios``, without pruning anything. Raises ``KeyError`` for an unknown group."""
        return self.costs.cost(self.kept_channels(ratios))

    def cost_of_widths(self, kept: Mapping[str, int]) -> Cost:
        """The cost of the subnet whose groups keep ``kept`` units (missing groups keep all)."""
        return self.costs.cost(kept)

    @property
    def base_cost(self) -> Cost:
        """The unpruned network's cost (its latency too, once a table is attached)."""
        return self.costs.base_cost

    @property
    def cost_check(self) -> dict:
        """What set-up found of the cost model: ``mode`` (analytic or traced) and, for a channel space, the
        subnets compared with the traced count, the largest relative error and the unpruned counts."""
        return self.costs.check

    @property
    def cost_mode(self) -> str:
        """How ``cost`` counts MACs and params: ``analytic`` (summed per layer), or ``traced`` (every candidate
        traced) where set-up found the analytic sum wrong."""
        return self.costs.mode

    def attach_latency(self, table: LatencyTable, measured_base_ms: float) -> None:
        """Predict latency in every ``cost``, calibrated on the unpruned network's measurement (ms)."""
        self.costs.attach_latency(table, measured_base_ms)

    def latency_layers(self) -> dict[str, Callable[[int, int], tuple[nn.Module, tuple[int, ...]]]]:
        """Builders of the layers a latency table times: every conv and linear layer."""
        return self.costs.latency_layers()

    def smallest_cost(self) -> Cost:
        """The cost with every group at its upper bound: the least any candidate can cost."""
        return self.cost({g.name: g.high for g in self.groups})

    # --- ratios -> subnet ----------------------------------------------------------------------

    @abstractmethod
    def kept_indices(self, ratios: Mapping[str, float]) -> dict[str, list[int]]:
        """Per group, the indices of the units the ranking keeps at ``ratios``, ascending: output channels of
        the group's root layer (``PruningSpace``), or flat indices of the unit's weights (``WeightSpace``).
        Raises ``KeyError`` for a name that is not a group."""

    @abstractmethod
    def kept(self, ratios: Mapping[str, float]) -> dict:
        """What the subnet at ``ratios`` keeps of each group, as ``prune`` returns it, ``prune_further`` takes
        it and a subnet's spec.json records it: the channel indices (``PruningSpace``, = ``kept_indices``),
        or the count of weights each unit keeps (``WeightSpace``, = ``kept_channels``: the mask is the
        subnet's zeros). Raises ``KeyError`` for a name that is not a group."""

    @abstractmethod
    def prune(self, ratios: Mapping[str, float],
              weights: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict]:
        """A pruned deep copy of the model at ``ratios``, and ``kept(ratios)``. ``weights``, a state dict of
        the unpruned model (its initialisation, say), replaces the trained weights first; what is kept is
        still what the trained model's ranking chose."""

    @abstractmethod
    def prune_further(self, subnet: nn.Module, current: Mapping, kept: Mapping) -> nn.Module:
        """Prune ``subnet`` (this space's model pruned to ``current``, a ``kept`` record) in place, down to
        ``kept``; returns it. Raises ``ValueError`` where ``kept`` keeps what ``current`` does not."""

    @abstractmethod
    def readers(self, name: str) -> set[str]:
        """Layers that read group ``name``'s channels as their inputs (the 'next layers' of ``--damage
        recon``). A ``WeightSpace`` raises ``ValueError``: a unit of weights has none of its own."""

    @abstractmethod
    def rerank(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> None:
        """Take ``model``'s weights (this space's architecture, trained further) and rank every group again."""

    @property
    @abstractmethod
    def orders(self) -> dict[str, list[int]]:
        """What another process needs to rebuild this space's ranking without redoing it: each group's
        channel ranking, least important first (``PruningSpace(..., orders=)``), or ``{}`` for a
        ``WeightSpace``, whose magnitude ranking is redone from the weights."""
