"""The analytic cost is exact (README: "Exact MACs and params of the subnet ... without pruning anything"):
equal, not close, to the independent count (``autoprune.measure.count.count_cost``) of the pruned subnet,
and to MACs written out by hand. In particular a Linear layer whose *input* features are cut (the conv
before a flatten is pruned) costs what it runs.

Each space is also asserted to stay in ``analytic`` mode with no error: were the analytic model wrong, the
set-up check would switch the space to tracing every candidate, which would hide the error from a test
that compares ``space.cost`` alone.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from autoprune.measure.count import count_cost, traced_macs
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvFlattenLinear(nn.Module):
    """conv 1->8 (3x3, 6x6 -> 4x4) -> flatten (8 x 16 features) -> Linear 128->12 -> Linear 12->5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc1 = nn.Linear(8 * 16, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _macs(conv: int, hidden: int) -> int:
    """Written out: the conv (16 positions x 9 taps x 1 input x conv outputs), fc1 (conv x 16 inputs x hidden),
    fc2 (hidden x 5)."""
    return 16 * 9 * conv + conv * 16 * hidden + hidden * 5


def _params(conv: int, hidden: int) -> int:
    return (9 * conv + conv) + (conv * 16 * hidden + hidden) + (hidden * 5 + 5)


@pytest.fixture(scope="module")
def flat():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 6)
    return PruningSpace(ConvFlattenLinear().eval(), x), x


def test_the_space_of_conv_flatten_linear(flat):
    space, _ = flat
    assert {g.name: (g.channels, g.step) for g in space.groups} == {"fc1": (12, 1), "conv": (8, 1)}
    assert space.readers("conv") == {"fc1"}
    assert space.cost_check["mode"] == "analytic" and space.cost_check["max_relative_error"] == 0
    assert space.base_cost.macs == _macs(8, 12) == 2_748
    assert space.base_cost.params == _params(8, 12) == 1_693


@pytest.mark.parametrize("conv, hidden", list(itertools.product(range(1, 9), (1, 5, 12))))
def test_a_linear_whose_input_features_are_cut_costs_what_it_runs(flat, conv, hidden):
    space, x = flat
    ratios = {"conv": 1 - conv / 8, "fc1": 1 - hidden / 12}
    assert space.kept_channels(ratios) == {"conv": conv, "fc1": hidden}
    assert space.cost_mode == "analytic"
    subnet, _ = space.prune(ratios)
    assert subnet.fc1.in_features == conv * 16
    expected = count_cost(subnet, x)
    assert expected.macs == traced_macs(subnet, x) == _macs(conv, hidden)
    assert expected.params == _params(conv, hidden)
    assert space.cost(ratios) == expected


def test_the_linear_alone_is_cut_by_whole_conv_maps(flat):
    """Pruning only the conv: fc1 loses 16 input features a channel, and only fc1 and the conv change."""
    space, _ = flat
    assert space.cost_mode == "analytic"
    for conv in range(1, 8):
        cost = space.cost_of_widths({"conv": conv})
        assert cost.macs == _macs(conv, 12)
        assert space.base_cost.macs - cost.macs == (8 - conv) * (16 * 9 + 16 * 12)
        assert space.base_cost.params - cost.params == (8 - conv) * (9 + 1 + 16 * 12)


# zoo models: every group at once, at widths that leave Linear inputs, residual streams and depthwise
# convs cut; the space must stay analytic and equal the count on each
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "vgg11_bn"])
def test_zoo_subnets_cost_exactly_what_they_run(name):
    from autoprune.models import create_model

    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    space = PruningSpace(create_model(name, in_channels=1, num_classes=10), x)
    assert space.cost_check["mode"] == "analytic" and space.cost_check["max_relative_error"] == 0
    assert space.base_cost == count_cost(space.model, x)
    for ratio in (0.3, 0.6):
        ratios = space.uniform_ratios(ratio)
        subnet, _ = space.prune(ratios)
        assert space.cost(ratios) == count_cost(subnet, x)
