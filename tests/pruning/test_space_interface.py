"""Both spaces implement ``Space`` (autoprune/pruning/base.py) alike: set up by ``Space.__init__``, ratios ->
widths -> the cost model's cost, and ``kept_indices`` that are the indices of what ``prune`` keeps."""

from __future__ import annotations

import pytest
import torch
from tables import RawTable
from torch import nn

from autoprune.measure.cost import Cost, LayerCosts, SparseCosts
from autoprune.measure.target import TorchTarget
from autoprune.pruning.base import Space
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace
from autoprune.pruning.weights import GLOBAL, WeightSpace

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """conv 1 -> 6 (3x3, 6x6 -> 4x4), BN, conv 6 -> 4 (3x3, 4x4 -> 2x2), flatten (16 features), linear 16 -> 3."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.bn(self.c1(x))))).flatten(1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # no weight is zero before pruning: the zeros of a weight-pruned subnet are its mask
        for layer in (net.c1, net.c2, net.fc):
            layer.weight.add_(torch.sign(layer.weight) * 0.01)
    return net


X = torch.randn(2, 1, 6, 6)  # a batch: the spaces keep one sample


def _channel_cost(c1: int, c2: int) -> Cost:
    """Written out for c1 and c2 keeping those channels: MACs of c1 (16 positions), c2 (4) and fc (4 features
    a channel of c2); params of c1, bn, c2 and fc."""
    return Cost(16 * 9 * c1 + 4 * 9 * c1 * c2 + 4 * c2 * 3, (9 * c1 + c1) + 2 * c1 + (9 * c1 * c2 + c2) + (4 * c2 * 3 + 3))


BASE = _channel_cost(6, 4)
MACS, PARAMS = BASE.macs, BASE.params  # 1_776 and 343


KINDS = ["channels", "weights-layer", "weights-global"]


def _space(kind: str) -> Space:
    if kind == "channels":
        return PruningSpace(_net(), X, SpaceConfig(ratio_max=0.75), criterion="l2", seed=5)
    return WeightSpace(_net(), X, SpaceConfig(ratio_max=0.75), scope=kind.split("-")[1])


@pytest.fixture(scope="module", params=KINDS)
def space(request) -> Space:
    return _space(request.param)


def _ratios(space: Space) -> dict[str, float]:
    return {name: 0.25 + 0.25 * (i % 2) for i, name in enumerate(space.group_names)}  # 0.25, 0.5, 0.25, ...


def test_the_base_sets_up_both_spaces(space):
    assert isinstance(space, Space)
    assert space.example_input.shape == (1, 1, 6, 6) and torch.equal(space.example_input, X[:1])
    assert space.config.ratio_max == 0.75 and not space.model.training
    assert space.criterion == ("l2" if isinstance(space, PruningSpace) else "magnitude")
    assert space.seed == (5 if isinstance(space, PruningSpace) else 0)
    assert space.classifier == ("fc" if isinstance(space, PruningSpace) else None)
    assert isinstance(space.costs, LayerCosts if isinstance(space, PruningSpace) else SparseCosts)
    assert space.cost_check["mode"] == space.cost_mode == "analytic"
    if isinstance(space, PruningSpace):  # compared with the traced count: baseline, probed, 2 random subnets
        assert space.cost_check == {"mode": "analytic", "subnets": 4, "max_relative_error": 0.0,
                                    "base": {"analytic_macs": MACS, "traced_macs": MACS,
                                             "analytic_params": PARAMS, "traced_params": PARAMS}}


def test_the_groups_are_the_units_of_each_space(space):
    if isinstance(space, PruningSpace):
        expected = {"c2": 4, "c1": 6}
    elif space.scope == "layer":
        expected = {"c1": 54, "c2": 216, "fc": 48}
    else:
        expected = {GLOBAL: 54 + 216 + 48}
    assert {g.name: g.channels for g in space.groups} == expected
    assert [d["name"] for d in space.describe()] == space.group_names == list(expected)


def test_the_base_cost_is_the_unpruned_network(space):
    assert space.base_cost == space.cost({}) == space.cost_of_widths({}) == Cost(MACS, PARAMS)


def test_cost_is_the_cost_model_of_the_widths(space):
    ratios = _ratios(space)
    widths = space.kept_channels(ratios)
    assert space.cost(ratios) == space.cost_of_widths(widths) == space.costs.cost(widths)
    if isinstance(space, PruningSpace):  # c2 at 0.25 keeps 3 of 4, c1 at 0.5 keeps 3 of 6
        assert widths == {"c2": 3, "c1": 3}
        assert space.cost(ratios) == _channel_cost(3, 3) == Cost(792, 159)
    else:  # every weight zeroed saves a param, and a MAC at each output position of its layer
        removed = space.removed_weights(widths)
        positions = {"c1": 16, "c2": 4, "fc": 1}
        assert sum(removed.values()) > 0
        assert space.cost(ratios) == Cost(MACS - sum(positions[n] * k for n, k in removed.items()),
                                          PARAMS - sum(removed.values()))


def test_smallest_cost_is_every_group_at_its_upper_bound(space):
    assert space.smallest_cost() == space.cost({g.name: g.high for g in space.groups}) == space.cost(
        space.uniform_ratios(0.75))
    assert space.smallest_cost().macs < space.cost(space.uniform_ratios(0.5)).macs < MACS


def test_unknown_groups_are_refused(space):
    for method in (space.kept_channels, space.cost, space.kept_indices, space.kept):
        with pytest.raises(KeyError, match="unknown group"):
            method({"nope": 0.5})


def test_kept_indices_are_what_prune_keeps(space):
    ratios = _ratios(space)
    widths = space.kept_channels(ratios)
    indices = space.kept_indices(ratios)
    subnet, kept = space.prune(ratios)
    assert kept == space.kept(ratios)
    for g in space.groups:
        assert indices[g.name] == sorted(set(indices[g.name])) and len(indices[g.name]) == widths[g.name]
        assert all(0 <= i < g.channels for i in indices[g.name])
    if isinstance(space, PruningSpace):
        assert kept == indices
        # the subnet's filters are the unpruned model's at those indices, c2's inputs are c1's channels kept
        torch.testing.assert_close(subnet.c1.weight, space.model.c1.weight[indices["c1"]])
        torch.testing.assert_close(subnet.c2.weight, space.model.c2.weight[indices["c2"]][:, indices["c1"]])
        return
    assert kept == widths  # a count: the mask itself is the subnet's zeros
    weights = {name: getattr(subnet, name).weight.flatten() for name in space.layers}
    if space.scope == "layer":
        nonzero = {name: torch.nonzero(w).flatten().tolist() for name, w in weights.items()}
    else:
        nonzero = {GLOBAL: torch.nonzero(torch.cat(list(weights.values()))).flatten().tolist()}
    assert nonzero == indices
    assert indices != {name: list(range(len(i))) for name, i in indices.items()}  # not merely the first ones


def test_the_smallest_weights_go_first():
    space = WeightSpace(_net(), X, scope="layer")
    kept = space.kept_indices({"c2": 0.5})["c2"]
    magnitudes = space.model.c2.weight.detach().abs().flatten()
    dropped = sorted(set(range(216)) - set(kept))
    assert len(kept) == 108 and magnitudes[dropped].max() < magnitudes[kept].min()
    assert space.kept_indices({})["c1"] == list(range(54))


def test_a_weight_space_prunes_further_by_counts_not_indices():
    space = WeightSpace(_net(), X, scope="global")
    subnet, current = space.prune({GLOBAL: 0.25})
    with pytest.raises(TypeError, match="counts"):
        space.prune_further(subnet, current, space.kept_indices({GLOBAL: 0.5}))
    space.prune_further(subnet, current, space.kept({GLOBAL: 0.5}))
    assert sum(int((getattr(subnet, n).weight != 0).sum()) for n in space.layers) == space.kept_channels(
        {GLOBAL: 0.5})[GLOBAL] == 159


@pytest.mark.parametrize("kind", KINDS)
def test_latency_attaches_to_both_spaces(kind):
    space = _space(kind)
    ratios = _ratios(space)
    assert set(space.latency_layers()) == {"c1", "c2", "fc"}
    assert space.cost(ratios).latency_ms is None and space.base_cost.latency_ms is None
    space.attach_latency(RawTable(space.latency_layers(), TorchTarget(batch=1)), 7.0)
    assert space.base_cost.latency_ms == pytest.approx(7.0)  # raw: 1 x 6 + 6 x 4 + 16 x 3 = 78
    assert (space.base_cost.macs, space.base_cost.params) == (MACS, PARAMS)
    latency = space.cost(ratios).latency_ms
    if isinstance(space, PruningSpace):  # raw: 1 x 3 + 3 x 3 + 12 x 3 = 48
        assert latency == pytest.approx(7.0 * 48 / 78)
    else:  # a dense kernel: the dense network's time at every sparsity
        assert latency == space.base_cost.latency_ms
