"""Efficient widths, the predictor's calibration and its check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoprune.measure.latency import LatencyTable
from autoprune.measure.predictor import (
    SMALLEST,
    Measured,
    PredictorCheck,
    candidate_widths,
    ceiling_line,
    efficient_widths,
    spearman,
)
from autoprune.measure.target import TorchTarget
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace


def _space() -> PruningSpace:
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    return PruningSpace(model, torch.randn(1, 1, 8, 8), SpaceConfig(ratio_max=0.75))


class OddTable(LatencyTable):
    """A layer takes in x out units of time, doubled where a width is not a multiple of 8: a runtime whose
    kernels run multiples of 8 fast."""

    def layer_ms(self, name, in_dim, out_dim, *, again=False):
        slow = 2.0 if in_dim % 8 or out_dim % 8 else 1.0
        return slow * max(in_dim, 1) * out_dim


def test_efficient_widths_drop_every_width_a_wider_one_beats():
    space = _space()
    table = OddTable(space.latency_layers(), TorchTarget())
    assert candidate_widths(space, "0") == list(range(8, 33))
    assert candidate_widths(space, "0", 8) == [8, 16, 24, 32]
    widths = efficient_widths(space, table)
    # group 0 cuts conv 0 (1 -> w) and conv 3 (w -> 16): 9..15 cost at least 2 x 9 x 17 = 306 > 16's 272, and so on
    assert widths["0"] == [8, 16, 24, 32]
    # group 3 cuts conv 3 (32 -> w) and the linear layer (w -> 4, always slow): t(w) = 32w or 64w, plus 8w.
    # 4 (288) and 8 (320) beat everything wider; 9 (648) is within 5% of 16 (640), so kept; 10 (720) is not
    assert widths["3"] == [4, 8, 9, 16]
    assert efficient_widths(space, table, 8) == {"0": [8, 16, 24, 32], "3": [8, 16]}


class BusyTarget(TorchTarget):
    """A layer takes in x out units of time, but the first timing of each layer in ``busy`` (widths (in, out))
    takes ``busy``'s factor longer, as when other work shares the machine; ``timed`` counts the timings."""

    def __init__(self, busy: dict[tuple[int, int], float]):
        super().__init__()
        self.busy = dict(busy)
        self.timed: dict[tuple[int, int], int] = {}

    def prepare_layer(self, module, input_shape):
        dims = (module.in_channels, module.out_channels) if isinstance(module, nn.Conv2d) else \
            (module.in_features, module.out_features)
        return dims

    def time_layer(self, dims):
        self.timed[dims] = self.timed.get(dims, 0) + 1
        return dims[0] * dims[1] * (self.busy.pop(dims, 1.0))


def test_a_width_timed_while_the_machine_was_busy_is_timed_again_before_it_is_dropped():
    space = _space()
    # group 0 cuts conv 0 (1 -> w) and conv 3 (w -> 16): 17w, every width faster than any wider one. Conv 3 at
    # width 12 is first timed 3x slower (12 + 3 x 192 = 588 > 13's 221, 14's, ...): timed again, 204, kept.
    target = BusyTarget({(12, 16): 3.0})
    widths = efficient_widths(space, LatencyTable(space.latency_layers(), target))
    assert widths["0"] == candidate_widths(space, "0")
    assert target.timed[12, 16] == 2 and target.timed[1, 12] == 2  # the beaten width's layers, and
    assert target.timed[1, 13] == 2 and target.timed[1, 14] == 1  # the fastest wider width's, once more
    # a width slow on every timing is still dropped, and the retiming keeps the lower of the two timings
    target = BusyTarget({})
    table = OddTable(space.latency_layers(), target)
    assert efficient_widths(space, table)["0"] == [8, 16, 24, 32]
    target = BusyTarget({(1, 20): 5.0})
    table = LatencyTable(space.latency_layers(), target)
    first = table.layer_ms("0", 1, 20)
    assert (first, table.layer_ms("0", 1, 20, again=True), table.layer_ms("0", 1, 20)) == (100.0, 20.0, 20.0)
    target.busy[1, 20] = 5.0  # busy on the third timing: the second, lower, stays
    assert table.layer_ms("0", 1, 20, again=True) == 20.0 and target.timed[1, 20] == 3


def test_kept_widths_snap_a_ratio_to_the_nearest_the_wider_on_a_tie():
    space = _space()
    space.keep_widths({"0": [8, 16, 24]})
    assert next(g for g in space.groups if g.name == "0").widths == [8, 16, 24, 32]  # the full width is kept
    assert [space.kept_channels({"0": r})["0"] for r in (0.0, 0.25, 0.375, 0.5, 0.6, 0.75)] == [32, 24, 24, 16, 16, 8]
    assert space.kept_channels({"0": 1 - 20 / 32})["0"] == 24  # 20: 16 and 24 are as near, the wider wins
    assert [g.get("widths") for g in space.describe()] == [[8, 16, 24, 32] if g.name == "0" else None
                                                            for g in space.groups]


class LinearTable(LatencyTable):
    def raw_ms(self, dims):
        return float(sum(dims[name][1] for name in self.layers))


def test_the_fit_is_the_least_squares_line_and_falls_back_to_a_scale():
    space = _space()
    table = LinearTable(space.latency_layers(), TorchTarget())
    full, half, quarter = (space.costs.layer_dims(w) for w in ({}, {"0": 16}, {"0": 8}))
    raws = [table.raw_ms(d) for d in (full, half, quarter)]  # 32 + 16 + 4, 16 + 16 + 4, 8 + 16 + 4
    table.fit([(full, 2.0 + 0.1 * raws[0]), (half, 2.0 + 0.1 * raws[1]), (quarter, 2.0 + 0.1 * raws[2])])
    assert (table.offset, table.scale) == pytest.approx((2.0, 0.1))
    assert table.predict(half) == pytest.approx(2.0 + 0.1 * raws[1])
    table.fit([(full, 4.8), (half, 2.4), (quarter, 1.2)])  # raw 52, 36, 28: 0.15 x raw - 3
    assert (table.offset, table.scale) == pytest.approx((-3.0, 0.15))  # the layers' own call overheads
    table.fit([(full, 1.0), (half, 2.0)])  # slower when smaller: noise, no line; the scale through the first
    assert table.offset == 0 and table.predict(full) == pytest.approx(1.0)
    table.fit([(full, 5.2)])
    assert table.offset == 0 and table.scale == pytest.approx(5.2 / raws[0])


def _measured(name, predicted, ms):
    return Measured(name, predicted, ms, ms, ms, 1.0, 1.0, 1.0)


def test_the_check_reports_the_mean_absolute_percentage_error_and_spearman():
    check = PredictorCheck([_measured("a", 1.1, 1.0), _measured("b", 1.8, 2.0), _measured("c", 3.0, 3.0),
                            _measured("d", None, 4.0)])
    assert check.mape == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert check.spearman == pytest.approx(1.0)
    assert check.describe() == "predictor error on 3 held-out subnets: MAPE 6.7%, Spearman 1.00"
    assert PredictorCheck.from_record(check.to_record()).subnets == check.subnets
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(PredictorCheck().mape) and "not checked" in PredictorCheck().describe()


def test_the_ceiling_is_the_speedup_measured_of_the_smallest_subnet():
    smallest = Measured(SMALLEST, 0.39, 0.4, 0.38, 0.45, 1.34, 1.2, 1.41)
    line = ceiling_line([Measured("one-third", 0.6, 0.61, 0.6, 0.62, 0.9, 0.85, 0.95), smallest])
    assert line.startswith("smallest subnet of the space (every group at its smallest width): 0.400 ms, 1.34x (1.20-1.41)")
    assert ceiling_line([]) is None  # weight pruning, or a model that refused its smallest widths: not measured


def test_a_budget_the_rounding_cannot_reach_takes_the_next_smaller_multiple():
    from autoprune.budget import parse_budget
    from autoprune.deployment import _widths_for

    space = _space()
    table = OddTable(space.latency_layers(), TorchTarget())
    full = space.base_cost.macs
    # at multiples of 16 the narrowest subnet keeps 16 of conv 0's 32 channels: half the MACs and more
    assert _widths_for(space, table, parse_budget("60%flops"), 16) == (16, {"0": [16, 32], "3": [16]})
    multiple, widths = _widths_for(space, table, parse_budget("30%flops"), 16)
    assert (multiple, widths) == (8, {"0": [8, 16, 24, 32], "3": [8, 16]})
    assert space.smallest_cost().macs <= 0.3 * full
    # beyond every rounding's reach: no restriction at all
    assert _widths_for(space, table, parse_budget("1%flops"), 16) == (None, None)
    assert all(g.widths is None for g in space.groups)


def test_a_rounding_whose_smallest_subnet_fills_the_budget_gives_way_to_one_that_leaves_room():
    from autoprune.budget import parse_budget
    from autoprune.deployment import _widths_for

    space = _space()
    table = OddTable(space.latency_layers(), TorchTarget())
    # smallest subnets keep 50.0% of the MACs at multiples of 16, 13.8% at 8, 8.1% at 4 and 1
    # 54%: 16 meets it, at 92.6% of it, so every candidate would be about that one subnet; 8 leaves room
    assert _widths_for(space, table, parse_budget("54%flops"), 16) == (8, {"0": [8, 16, 24, 32], "3": [8, 16]})
    # 56%: 16 at 89.3% of it is room enough
    assert _widths_for(space, table, parse_budget("56%flops"), 16)[0] == 16
    # 9%: 4 fills 90.3% of it and no rounding does better: the largest that meets it
    multiple, _ = _widths_for(space, table, parse_budget("9%flops"), 16)
    assert multiple == 4 and space.smallest_cost().macs <= 0.09 * space.base_cost.macs
