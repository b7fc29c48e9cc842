"""What a subnet costs before it is built: MACs, params and predicted latency from the widths its groups keep.

Units, everywhere: MACs are the multiply-accumulates of one sample (FLOPs = 2 x MACs); params are the
learnable parameters that remain (a weight-pruned subnet's zeros are not counted); latency is in
milliseconds for one forward pass at the latency table's batch.

A pruning space (``autoprune.pruning.space.Space``) turns ratios into widths, the units each group keeps,
and hands the widths to its ``CostModel``:

- ``LayerCosts`` (channel pruning) sums every layer's MACs and params (``autoprune.measure.layers``) at the
  input and output widths the kept channels give it. The space checks it at set-up against the traced count
  of pruned subnets (``autoprune.measure.count``) and, where they differ, counts every candidate by tracing.
- ``SparseCosts`` (weight pruning) takes from the dense cost each zeroed weight's parameter and its
  multiplications: one per output position of its layer, every call summed.

Both predict latency the same way once a ``LatencyTable`` is attached: the table's time of every conv and
linear layer at the widths of the subnet, scaled so that the unpruned network predicts its measured time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from autoprune.measure.layers import LayerShape

if TYPE_CHECKING:
    from autoprune.measure.latency import LatencyTable

Widths = Mapping[str, int]  # group name -> units it keeps (channels, or weights); a group left out keeps all
LayerDims = dict[str, tuple[int, int]]  # layer name -> its (input, output) width in the subnet


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates of one sample (FLOPs = 2 x MACs), learnable parameters and, where a latency
    table is attached to the space, the predicted latency in ms."""

    macs: int
    params: int
    latency_ms: float | None = None  # predicted, where a latency table is attached


def sum_layers(shapes: Mapping[str, LayerShape], dims: Mapping[str, tuple[int, int]]) -> Cost:
    """MACs and params of the layers ``shapes`` at the (input, output) widths ``dims`` (one entry per layer),
    each summed over the network and rounded once. Raises ``RuntimeError`` for a negative width."""
    macs = params = 0
    for module, s in shapes.items():
        in_dim, out_dim = dims[module]
        if in_dim < 0 or out_dim < 0:
            raise RuntimeError(f"the cost model gives layer '{module}' a negative width ({in_dim}, {out_dim})")
        macs += s.macs(in_dim, out_dim)
        params += s.params(in_dim, out_dim)
    return Cost(round(macs), round(params))


class CostModel(ABC):
    """The cost of the subnet whose groups keep given widths, without building it.

    A subclass gives ``count`` (MACs and params) and ``layer_dims`` (every layer's widths, for the latency
    table); this class adds the predicted latency, the unpruned network's cost and ``check``, what the
    set-up found of the model's accuracy (``mode``: ``analytic``, or ``traced`` where every candidate is
    counted by tracing it).
    """

    def __init__(self, shapes: Mapping[str, LayerShape]) -> None:
        self.shapes = shapes
        self.latency: LatencyTable | None = None
        self.check: dict = {"mode": "analytic"}
        self._base: Cost | None = None

    @abstractmethod
    def count(self, kept: Widths) -> Cost:
        """MACs and params (no latency) of the subnet keeping ``kept``; raises ``KeyError`` for a group the
        model does not know."""

    @abstractmethod
    def layer_dims(self, kept: Widths) -> LayerDims:
        """The (input, output) width of every layer of ``shapes`` in the subnet keeping ``kept``."""

    @property
    def mode(self) -> str:
        """``analytic`` (MACs and params summed over the layers), or ``traced`` where set-up found that sum wrong
        and every candidate is counted by tracing it."""
        return self.check["mode"]

    def cost(self, kept: Widths) -> Cost:
        """``count``, with the predicted latency where a table is attached; the layers' widths are worked out
        once for both (a bisection to the budget asks for thousands of costs)."""
        if self.latency is None:
            return self.count(kept)
        dims = self.layer_dims(kept)
        cost = self.count_at(kept, dims)
        return Cost(cost.macs, cost.params, self.latency.predict(dims))

    def count_at(self, kept: Widths, dims: LayerDims) -> Cost:
        """``count`` of ``kept``, given its ``layer_dims`` already worked out; by default ``count`` itself."""
        return self.count(kept)

    @property
    def base_cost(self) -> Cost:
        """The unpruned network's cost (with its latency once a table is attached), computed once."""
        if self._base is None:
            self._base = self.cost({})
        return self._base

    def attach_latency(self, table: LatencyTable, measured_base_ms: float) -> None:
        """Predict latency in every ``cost`` from ``table``, calibrated so that the unpruned network predicts
        ``measured_base_ms``. Times every layer of the unpruned network in the table (seconds, once)."""
        table.calibrate(self.layer_dims({}), measured_base_ms)
        self.latency = table
        self._base = None

    def forget_base(self) -> None:
        """Compute ``base_cost`` again on next use: after the latency table's calibration changed."""
        self._base = None

    def latency_layers(self) -> dict[str, Callable[[int, int], tuple[nn.Module, tuple[int, ...]]]]:
        """Builders of the layers a latency table times (every conv and linear layer): (in, out) -> (a fresh
        layer of those widths, its input shape without the batch)."""
        return {name: s.build for name, s in self.shapes.items() if s.build is not None}


class LayerCosts(CostModel):
    """Channel pruning's cost model: each group's removed channels cut the output or input width of the
    layers it reaches, and every layer costs ``LayerShape.macs``/``params`` at its widths.

    ``channels``: each group's full width. ``effects``: per group, the layers it cuts as (layer name, ``"in"``
    or ``"out"``, that layer's channels per channel of the group); a depthwise conv's input width is
    always 1. ``trace`` counts a subnet by pruning a copy and tracing it (None where the model does not run
    at those widths); it is what ``count`` answers once ``compare`` has found the analytic sum wrong.
    """

    def __init__(self, shapes: Mapping[str, LayerShape], channels: Mapping[str, int],
                 effects: Mapping[str, list[tuple[str, str, float]]],
                 trace: Callable[[Widths], Cost | None]) -> None:
        super().__init__(shapes)
        self.channels = dict(channels)
        self.effects = effects
        self.trace = trace

    def layer_dims(self, kept: Widths) -> LayerDims:
        """Every layer's (input, output) width in the subnet whose groups keep ``kept`` channels: each group's removed
        channels, times the share of each layer it reaches, cut from that layer and rounded; a depthwise conv's
        input is 1. Raises ``KeyError`` for a group it does not know."""
        in_cut: dict[str, float] = {}
        out_cut: dict[str, float] = {}
        for name, width in kept.items():
            removed = self.channels[name] - width
            if removed <= 0:
                continue
            for module, dim, share in self.effects[name]:
                target = out_cut if dim == "out" else in_cut
                target[module] = target.get(module, 0) + removed * share
        dims = {}
        for module, s in self.shapes.items():
            out_dim = s.out_dim - round(out_cut.get(module, 0))
            dims[module] = (1 if s.kind == "depthwise" else s.in_dim - round(in_cut.get(module, 0)), out_dim)
        return dims

    def analytic(self, kept: Widths) -> Cost:
        """The analytic sum over every layer at the widths ``kept`` gives it, whatever the mode."""
        return sum_layers(self.shapes, self.layer_dims(kept))

    def count(self, kept: Widths) -> Cost:
        """The analytic sum; in ``traced`` mode the traced count, or the analytic sum where the model does not
        run at those widths (a candidate there fails when it is scored, with the model's own error)."""
        return self.count_at(kept, None)

    def count_at(self, kept: Widths, dims: LayerDims | None) -> Cost:
        """``count``, summing the layers at ``dims`` (``layer_dims(kept)``, worked out here where None)."""
        cost = self.trace(kept) if self.mode == "traced" else None
        if cost is not None:
            return cost
        return sum_layers(self.shapes, self.layer_dims(kept) if dims is None else dims)

    def compare(self, subnets: list[Widths]) -> dict:
        """Check the analytic sum against ``trace`` on each of ``subnets`` (the unpruned network first), and
        count by tracing from then on where any differs. Returns ``check``: ``mode``, ``subnets`` compared
        (those the model runs at), ``max_relative_error`` over MACs and params, and ``base``, the first
        subnet's analytic and traced MACs and params."""
        errors, base = [], None
        for widths in subnets:
            analytic = self.analytic(widths)
            traced = self.trace(widths)
            if traced is None:  # the model refuses these widths: nothing to compare
                continue
            base = base or {"analytic_macs": analytic.macs, "traced_macs": traced.macs,
                            "analytic_params": analytic.params, "traced_params": traced.params}
            errors.append(max(abs(analytic.macs - traced.macs) / max(traced.macs, 1),
                              abs(analytic.params - traced.params) / max(traced.params, 1)))
        worst = max(errors)
        self.check = {"mode": "traced" if worst > 0 else "analytic", "subnets": len(errors),
                      "max_relative_error": worst, "base": base}
        self._base = None
        return self.check


class SparseCosts(CostModel):
    """Weight pruning's cost model: every layer keeps its width; each weight set to zero takes one
    parameter and, per output position of its layer (every call summed), one MAC off the dense cost.

    ``removed`` maps the widths (weights kept per unit) to the weights each layer loses. A dense kernel still
    multiplies by the zeros, so the predicted latency is the dense network's at every sparsity.
    """

    def __init__(self, shapes: Mapping[str, LayerShape], removed: Callable[[Widths], Mapping[str, int]]) -> None:
        super().__init__(shapes)
        self.removed = removed
        self.dense = sum_layers(shapes, self.layer_dims({}))

    def layer_dims(self, kept: Widths) -> LayerDims:
        """Every layer's dense (input, output) width, whatever ``kept``: weight pruning changes no width (a depthwise
        conv's input is 1)."""
        return {name: (1 if s.kind == "depthwise" else s.in_dim, s.out_dim) for name, s in self.shapes.items()}

    def count(self, kept: Widths) -> Cost:
        """MACs of one sample and params with the weights ``removed(kept)`` zeroes taken off the dense cost: one
        parameter per zeroed weight, and one MAC per zeroed weight and output position of its layer."""
        removed = self.removed(kept)
        macs = self.dense.macs - sum(count * self.shapes[name].positions for name, count in removed.items())
        return Cost(macs, self.dense.params - sum(removed.values()))
