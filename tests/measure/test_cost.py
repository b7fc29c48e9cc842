"""The cost models behind every space (autoprune/measure/cost.py), on layers written out by hand: the widths
each layer gets, the MACs and params at them, the set-up comparison with a traced count, and latency.

The model below: conv 3 -> 8 (3x3, 16 output positions, bias), a depthwise 3x3 conv on its 8 channels
(16 positions, no bias), then a linear layer reading 2 features per channel (16 -> 5, bias). One group,
"conv", cuts the conv's outputs, the depthwise conv's inputs and outputs and two of the linear layer's inputs
a channel.
"""

from __future__ import annotations

import pytest
from tables import RawTable
from torch import nn

from autoprune.measure.cost import Cost, CostModel, LayerCosts, SparseCosts, sum_layers
from autoprune.measure.layers import LayerShape
from autoprune.measure.target import TorchTarget


def _build(in_dim: int, out_dim: int) -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Linear(in_dim, out_dim), (in_dim,)


def _shapes() -> dict[str, LayerShape]:
    """The conv and the linear layer have builders (a latency table times them), the depthwise conv none."""
    return {
        "conv": LayerShape("conv", 3, 8, kernel=9, positions=16, has_bias=True, build=_build),
        "dw": LayerShape("depthwise", 1, 8, kernel=9, positions=16),
        "fc": LayerShape("linear", 16, 5, kernel=1, positions=1, has_bias=True, build=_build),
    }


# the depthwise conv is listed as cut on both sides: its input width must stay 1 all the same
EFFECTS = {"conv": [("conv", "out", 1.0), ("dw", "in", 1.0), ("dw", "out", 1.0), ("fc", "in", 2.0)]}


def _written_out(conv: int) -> Cost:
    """MACs and params when the group keeps ``conv`` channels, layer by layer."""
    macs = 9 * 16 * 3 * conv + 9 * 16 * 1 * conv + 2 * conv * 5
    params = (9 * 3 * conv + conv) + 9 * conv + (2 * conv * 5 + 5)
    return Cost(macs, params)


def _truth(kept) -> Cost:
    return _written_out(kept.get("conv", 8))


def _table(model: CostModel) -> RawTable:
    return RawTable(model.latency_layers(), TorchTarget(batch=1))


def test_sum_layers_adds_every_layer_at_its_widths_and_refuses_a_negative_width():
    shapes = _shapes()
    assert sum_layers(shapes, {"conv": (3, 8), "dw": (1, 8), "fc": (16, 5)}) == _written_out(8) == Cost(4688, 381)
    assert sum_layers(shapes, {"conv": (3, 5), "dw": (1, 5), "fc": (10, 5)}) == _written_out(5) == Cost(2930, 240)
    with pytest.raises(RuntimeError, match="layer 'fc' a negative width"):
        sum_layers(shapes, {"conv": (3, 8), "dw": (1, 8), "fc": (-2, 5)})


def test_the_cost_model_is_an_interface():
    with pytest.raises(TypeError):
        CostModel(_shapes())


def test_layer_costs_cut_each_layer_the_group_reaches():
    model = LayerCosts(_shapes(), {"conv": 8}, EFFECTS, _truth)
    # the depthwise conv's input width is 1 at every width; the linear layer loses 2 inputs a channel
    assert model.layer_dims({"conv": 5}) == {"conv": (3, 5), "dw": (1, 5), "fc": (10, 5)}
    assert model.layer_dims({}) == model.layer_dims({"conv": 8}) == {"conv": (3, 8), "dw": (1, 8), "fc": (16, 5)}
    for conv in range(1, 9):
        assert model.count({"conv": conv}) == model.cost({"conv": conv}) == _written_out(conv)
    assert model.base_cost == Cost(4688, 381) and model.mode == "analytic"
    with pytest.raises(KeyError):
        model.count({"other": 3})


def test_compare_keeps_the_analytic_sum_where_the_traced_count_agrees():
    model = LayerCosts(_shapes(), {"conv": 8}, EFFECTS, _truth)
    check = model.compare([{}, {"conv": 4}, {"conv": 7}])
    assert check == {"mode": "analytic", "subnets": 3, "max_relative_error": 0.0,
                     "base": {"analytic_macs": 4688, "traced_macs": 4688, "analytic_params": 381, "traced_params": 381}}
    assert model.check is check and model.mode == "analytic"


def test_compare_switches_to_the_traced_count_where_the_analytic_sum_is_wrong():
    """A layer the model does not know computes 100 MACs more at widths of 6 and up; the model refuses 2."""

    def trace(kept):
        conv = kept.get("conv", 8)
        if conv == 2:
            return None
        truth = _written_out(conv)
        return Cost(truth.macs + (100 if conv >= 6 else 0), truth.params)

    model = LayerCosts(_shapes(), {"conv": 8}, EFFECTS, trace)
    assert model.base_cost == Cost(4688, 381)  # computed before the comparison: it must not stay
    check = model.compare([{}, {"conv": 2}, {"conv": 4}])
    assert (check["mode"], check["subnets"]) == ("traced", 2)  # the refused widths are not compared
    assert check["max_relative_error"] == pytest.approx(100 / 4788)
    assert check["base"] == {"analytic_macs": 4688, "traced_macs": 4788, "analytic_params": 381, "traced_params": 381}
    assert model.base_cost == Cost(4788, 381)
    assert model.count({"conv": 7}) == Cost(_written_out(7).macs + 100, _written_out(7).params)
    assert model.count({"conv": 4}) == _written_out(4)
    assert model.count({"conv": 2}) == model.analytic({"conv": 2}) == _written_out(2)  # refused: the analytic sum


def test_layer_costs_predict_latency_calibrated_on_the_unpruned_network():
    model = LayerCosts(_shapes(), {"conv": 8}, EFFECTS, _truth)
    assert model.latency_layers() == {"conv": _build, "fc": _build}
    assert model.base_cost.latency_ms is None
    model.attach_latency(_table(model), 10.4)  # raw: 3 x 8 + 16 x 5 = 104, so 0.1 ms a unit
    assert model.base_cost.latency_ms == pytest.approx(10.4)
    assert (model.base_cost.macs, model.base_cost.params) == (4688, 381)
    cost = model.cost({"conv": 5})  # raw: 3 x 5 + 10 x 5
    assert (cost.macs, cost.params) == (2930, 240) and cost.latency_ms == pytest.approx(6.5)
    assert model.count({"conv": 5}).latency_ms is None


def test_sparse_costs_take_each_zero_off_the_dense_cost():
    def removed(kept):  # units are the layers: conv has 216 weights, fc 80
        return {"conv": 216 - kept.get("conv", 216), "fc": 80 - kept.get("fc", 80)}

    model = SparseCosts(_shapes(), removed)
    assert model.dense == model.base_cost == Cost(4688, 381)
    # a conv weight is multiplied at each of its 16 output positions, a linear weight once
    assert model.cost({"conv": 200}) == Cost(4688 - 16 * 16, 381 - 16)
    assert model.cost({"conv": 200, "fc": 50}) == Cost(4688 - 16 * 16 - 30, 381 - 16 - 30)
    assert model.layer_dims({"conv": 1, "fc": 1}) == {"conv": (3, 8), "dw": (1, 8), "fc": (16, 5)}


def test_sparse_costs_predict_the_dense_latency_at_every_sparsity():
    model = SparseCosts(_shapes(), lambda kept: {"conv": 216 - kept.get("conv", 216)})
    model.attach_latency(_table(model), 10.4)
    assert model.base_cost.latency_ms == pytest.approx(10.4)
    cost = model.cost({"conv": 100})  # a dense kernel still runs every layer at full width
    assert cost == Cost(4688 - 116 * 16, 381 - 116, model.base_cost.latency_ms)
