"""Ratio -> width -> cost on generated ratios (hypothesis), on real zoo spaces.

``PruningSpace.kept_channels``: a group keeps ``round(channels * (1 - ratio) / step) * step`` channels,
at least one step and ``min_channels`` (rounded up to a step), at most all of them; ratio 0 (or no
ratio) keeps all. ``step`` is the lcm of the group's channel unit, its layers' rules and ``round_to``.
The analytic ``space.cost`` of those widths equals the independent count (``count_cost``) of the pruned
subnet, exactly.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.measure.count import count_cost
from autoprune.models import create_model
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (config, the step of every group)
SPACES = {
    "resnet20": (SpaceConfig(), 1),
    "resnet20-round8": (SpaceConfig(round_to=8, min_channels=8), 8),
    # 6 divides none of the widths (16, 32, 64): all channels is the one width off the steps
    "resnet20-round6-min10": (SpaceConfig(round_to=6, min_channels=10), 6),
}


@functools.cache
def _space(key: str) -> tuple[PruningSpace, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    return PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), x, SPACES[key][0]), x


# allow_subnormal=False: a library built with fast-math, loaded earlier in the same process (an xdist
# worker), can flush subnormal floats, and hypothesis then refuses to draw any.
RATIO = st.one_of(st.just(0.0), st.floats(0.0, 1.0, allow_subnormal=False), st.sampled_from([0.05 * i for i in range(20)]))


def _ratios(space: PruningSpace):
    """A ratio for some of the groups (the rest keep all their channels)."""
    return st.fixed_dictionaries({}, optional={g.name: RATIO for g in space.groups})


def _check_widths(space: PruningSpace, ratios: dict[str, float], kept: dict[str, int]) -> None:
    assert list(kept) == space.group_names
    min_channels = space.config.min_channels
    for g in space.groups:
        k, ratio = kept[g.name], ratios.get(g.name, 0.0)
        if ratio == 0:
            assert k == g.channels
            continue
        assert k % g.step == 0 or k == g.channels
        assert min(g.step, g.channels) <= k <= g.channels
        assert k >= min(min_channels, g.channels)
        # the nearest multiple of the step to what the ratio asks, unless a floor or all channels binds
        floor = -(-min(min_channels, g.channels) // g.step) * g.step
        if max(g.step, floor) < k < g.channels:
            assert abs(k - g.channels * (1 - ratio)) <= g.step / 2 + 1e-9


@pytest.mark.parametrize("key", sorted(SPACES))
def test_the_spaces_steps(key):
    space, _ = _space(key)
    assert {g.step for g in space.groups} == {SPACES[key][1]}
    assert space.cost_check["mode"] == "analytic" and space.cost_check["max_relative_error"] == 0


@pytest.mark.parametrize("key", sorted(SPACES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_kept_widths_are_steps_within_bounds(key, data):
    space, _ = _space(key)
    ratios = data.draw(_ratios(space))
    _check_widths(space, ratios, space.kept_channels(ratios))


@pytest.mark.parametrize("key", sorted(SPACES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_kept_widths_do_not_grow_with_the_ratio(key, data):
    space, _ = _space(key)
    low = data.draw(_ratios(space))
    more = data.draw(st.fixed_dictionaries({name: st.floats(0.0, 1.0, allow_subnormal=False) for name in space.group_names}))
    high = {name: min(1.0, low.get(name, 0.0) + extra) for name, extra in more.items()}
    kept_low, kept_high = space.kept_channels(low), space.kept_channels(high)
    assert all(kept_high[name] <= kept_low[name] for name in space.group_names)
    assert space.kept_channels({}) == {g.name: g.channels for g in space.groups}
    assert space.kept_channels({name: 0.0 for name in space.group_names}) == space.kept_channels({})


@pytest.mark.parametrize("key", sorted(SPACES))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_analytic_cost_is_the_count_of_the_pruned_subnet(key, data):
    space, x = _space(key)
    ratios = data.draw(_ratios(space))
    kept = space.kept_channels(ratios)
    subnet, indices = space.prune(ratios)
    modules = dict(subnet.named_modules())
    assert {name: modules[name].out_channels for name in space.group_names} == kept
    assert {name: len(i) for name, i in indices.items()} == kept
    assert space.cost_mode == "analytic"
    assert space.cost(ratios) == count_cost(subnet, x)
