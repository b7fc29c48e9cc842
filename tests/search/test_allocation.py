"""The budget allocations, each on its own: grid, bisection, scaling, uniform, EagleEye draws, AOFP spread, neighbourhood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.budget import parse_budget
from autoprune.models import create_model
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace
from autoprune.search import allocation
from autoprune.search.allocation import (
    along_safe_ratios,
    bisect_budget,
    draw_in_budget,
    fill_budget,
    grid_top,
    neighbourhood,
    ratio_grid,
    scale_to_budget,
    snap,
    uniform_at_budget,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def narrow_space():
    """Groups of layer3 may lose at most half their channels, those of layer1 at least 0.2."""
    torch.manual_seed(0)
    config = SpaceConfig(overrides=[{"match": "layer3.*", "max": 0.5}, {"match": "layer1.*", "min": 0.2}])
    return PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28), config)


def _fits(space, budget):
    return lambda ratios: budget.feasible(space.cost(ratios), space.base_cost)


# --- the grid ----------------------------------------------------------------------------------


def test_grid_points_are_rounded_and_never_pass_the_top():
    assert ratio_grid(0.0, 0.7, 0.05) == [round(0.05 * i, 2) for i in range(15)]
    assert ratio_grid(0.1, 0.83, 0.07) == [0.1, 0.17, 0.24, 0.31, 0.38, 0.45, 0.52, 0.59, 0.66, 0.73, 0.8]
    assert ratio_grid(0.3, 0.3, 0.05) == [0.3]
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: the top point is still on the grid
    assert ratio_grid(0.0, 0.3, 0.1) == [0.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("low, high, step", [(0.0, 0.7, 0.05), (0.1, 0.83, 0.07), (0.0, 0.3, 0.1), (0.2, 0.69, 0.1)])
def test_grid_top_is_the_last_grid_point(low, high, step):
    assert grid_top(low, high, step) == ratio_grid(low, high, step)[-1] <= high


def test_grid_top_snaps_down():
    assert grid_top(0.1, 0.83, 0.07) == 0.8
    assert grid_top(0.0, 0.69, 0.1) == 0.6
    assert grid_top(0.0, 0.3, 0.1) == 0.3


@pytest.mark.parametrize("value, expected", [
    (0.33, 0.35), (0.32, 0.3), (0.0, 0.0), (-1.0, 0.0), (0.9, 0.7), (0.7, 0.7), (0.674, 0.65), (0.676, 0.7),
])
def test_snap_rounds_to_the_nearest_grid_point(value, expected):
    assert snap(value, 0.0, 0.7, 0.05) == expected


def test_snap_clips_to_the_grid_top_not_the_bound():
    # clipped to 0.69 first, 0.69 would round up to 0.7, past the bound
    assert snap(0.69, 0.0, 0.69, 0.1) == 0.6
    assert snap(0.05, 0.2, 0.7, 0.1) == 0.2
    assert snap(0.84, 0.1, 0.83, 0.07) == 0.8


# --- the bisection -----------------------------------------------------------------------------


def test_bisection_halves_the_range_the_given_number_of_times():
    built = []

    def build(x):
        built.append(x)
        return x

    # fits from 0.3 up: 1 fits, 0.5 fits, 0.25 does not, 0.375 fits
    assert bisect_budget(build, lambda x: x >= 0.3, 0.0, 1.0, iterations=3) == (0.375, 0.375)
    assert built == [1.0, 0.5, 0.25, 0.375]
    found, _ = bisect_budget(lambda x: x, lambda x: x >= 0.3, 0.0, 1.0, iterations=40)
    assert 0.3 <= found < 0.3 + 2.0**-40


def test_bisection_keeps_the_last_candidate_that_fits():
    # the candidate of the returned parameter, not one rebuilt: here each build is a fresh object
    x, candidate = bisect_budget(lambda x: [x], lambda c: c[0] >= 0.6, 0.0, 1.0, iterations=2)
    assert (x, candidate) == (0.75, [0.75])
    assert bisect_budget(lambda x: [x], lambda c: c[0] >= 0.9, 0.0, 1.0, iterations=1) == (1.0, [1.0])


def test_bisection_gives_none_when_even_the_top_does_not_fit():
    assert bisect_budget(lambda x: x, lambda x: x > 2.0, 0.0, 1.0, iterations=10) is None


def test_bisection_tries_the_low_end_only_when_asked():
    built = []

    def build(x):
        built.append(x)
        return x

    assert bisect_budget(build, lambda x: True, 0.0, 1.0, iterations=5, try_low=True) == (0.0, 0.0)
    assert built == [1.0, 0.0]
    built.clear()
    assert bisect_budget(build, lambda x: True, 0.0, 1.0, iterations=5) == (1 / 32, 1 / 32)
    assert len(built) == 6


# --- scaling along a direction -----------------------------------------------------------------


@pytest.mark.parametrize("budget", ["50%flops", "30%flops", "40%params"])
def test_scaled_random_directions_land_in_budget(space, budget):
    budget = parse_budget(budget)
    limit = budget.primary.limit(space.base_cost)
    rng = np.random.default_rng(0)
    uses = []
    for _ in range(30):
        direction = {g.name: float(rng.uniform(0.01, 1.0)) for g in space.groups}
        ratios = scale_to_budget(space, budget, direction)
        cost = space.cost(ratios)
        assert budget.feasible(cost, space.base_cost)
        uses.append(getattr(cost, budget.primary.metric) / limit)
    # the ratio grid is coarse (0.05), yet most draws use nearly all of the budget
    assert np.median(uses) > 0.95, uses


def test_scaling_bisects_twenty_four_times_on_the_exact_cost(space, monkeypatch):
    calls = []
    cost = space.cost
    monkeypatch.setattr(space, "cost", lambda ratios: calls.append(ratios) or cost(ratios))
    direction = dict.fromkeys(space.group_names, 1.0)
    ratios = scale_to_budget(space, parse_budget("50%flops"), direction)
    assert allocation.SCALE_STEPS == 24
    assert len(calls) == 2 + 24  # the top, the bottom, then the bisection
    assert ratios in calls[2:]


def test_scaling_keeps_groups_outside_the_direction_at_their_lowest(narrow_space):
    ratios = scale_to_budget(narrow_space, parse_budget("85%flops"), {"conv1": 1.0})
    assert ratios["conv1"] == 0.3  # the lowest ratios keep 93% of MACs; conv1 alone gives the rest
    assert {name: r for name, r in ratios.items() if name != "conv1"} == {
        g.name: 0.2 if g.name.startswith("layer1") else 0.0 for g in narrow_space.groups if g.name != "conv1"}


def test_scaling_follows_the_direction(space):
    a, b = space.group_names[-2:]
    ratios = scale_to_budget(space, parse_budget("90%flops"), {a: 1.0, b: 0.5})
    # snap(s) and snap(s / 2): each within half a step of the scaled direction
    assert ratios[a] < 0.7 and abs(ratios[a] - 2 * ratios[b]) <= 0.075 + 1e-9
    assert ratios[a] > ratios[b] > 0


def test_an_unreachable_or_empty_direction_gives_none(space):
    assert scale_to_budget(space, parse_budget("5%flops"), {space.group_names[0]: 1.0}) is None
    assert scale_to_budget(space, parse_budget("50%flops"), {}) is None
    assert scale_to_budget(space, parse_budget("50%flops"), dict.fromkeys(space.group_names, 0.0)) is None


def test_a_budget_the_lowest_ratios_meet_gives_them(narrow_space):
    # at scale 0 every group sits at its low: layer1 at 0.2, the rest at 0, 93% of MACs
    ratios = scale_to_budget(narrow_space, parse_budget("95%flops"), dict.fromkeys(narrow_space.group_names, 1.0))
    assert ratios == {g.name: g.low for g in narrow_space.groups}


# --- uniform at the budget ---------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["50%flops", "30%flops", "40%params", "50%flops,45%params"])
def test_uniform_is_the_smallest_grid_ratio_that_fits(space, budget):
    budget = parse_budget(budget)
    fits = _fits(space, budget)
    smallest = next(r for r in ratio_grid(0.0, 0.7, 0.05) if fits(space.uniform_ratios(r)))
    assert uniform_at_budget(space, budget) == space.uniform_ratios(smallest)
    assert smallest > 0


def test_uniform_clips_each_group_to_its_bounds(narrow_space):
    ratios = uniform_at_budget(narrow_space, parse_budget("25%flops"))
    assert {name: r for name, r in ratios.items() if name.startswith("layer3")} == {
        "layer3.0.shortcut.0": 0.5, "layer3.0.conv1": 0.5, "layer3.1.conv1": 0.5, "layer3.2.conv1": 0.5}
    assert {r for name, r in ratios.items() if not name.startswith("layer3")} == {0.55}
    assert narrow_space.cost(ratios).macs <= 0.25 * narrow_space.base_cost.macs


def test_uniform_gives_none_below_the_smallest_subnet(space):
    assert uniform_at_budget(space, parse_budget("5%flops")) is None


# --- EagleEye draws ----------------------------------------------------------------------------


def test_a_draw_lands_in_the_tolerance_band_and_repeats_with_its_seed(space):
    budget = parse_budget("50%flops")
    ratios, draws, use = draw_in_budget(space, budget, 0.02, np.random.default_rng([0, 1]))
    assert budget.feasible(space.cost(ratios), space.base_cost)
    assert 0.98 <= use <= 1.0 and draws >= 1
    assert use == space.cost(ratios).macs / (0.5 * space.base_cost.macs)
    assert draw_in_budget(space, budget, 0.02, np.random.default_rng([0, 1])) == (ratios, draws, use)
    assert draw_in_budget(space, budget, 0.02, np.random.default_rng([0, 2]))[0] != ratios


def test_a_draw_is_a_random_direction_in_the_groups_bounds_scaled_to_the_budget(narrow_space):
    budget = parse_budget("50%flops")
    rng = np.random.default_rng(7)
    first = {g.name: float(rng.uniform(g.low, g.high)) for g in narrow_space.groups}
    ratios, draws, _ = draw_in_budget(narrow_space, budget, 1.0, np.random.default_rng(7))  # any use is in the band
    assert draws == 1 and ratios == scale_to_budget(narrow_space, budget, first)


def test_the_first_draw_in_the_band_is_taken(space):
    budget, tolerance = parse_budget("50%flops"), 0.004
    rng, uses = np.random.default_rng(11), []
    while not uses or uses[-1] < 1 - tolerance:
        direction = {g.name: float(rng.uniform(g.low, g.high)) for g in space.groups}
        uses.append(space.cost(scale_to_budget(space, budget, direction)).macs / (0.5 * space.base_cost.macs))
    assert any(u >= 1 - 2 * tolerance for u in uses[:-1])  # a band twice as wide would stop earlier
    assert draw_in_budget(space, budget, tolerance, np.random.default_rng(11))[1:] == (len(uses), uses[-1])


def test_a_narrow_band_takes_more_draws_and_keeps_the_best(space):
    budget = parse_budget("50%flops")
    _, wide, _ = draw_in_budget(space, budget, 0.5, np.random.default_rng(3))
    _, narrow, use = draw_in_budget(space, budget, 0.0, np.random.default_rng(3))
    assert wide == 1 and narrow == allocation.MAX_DRAWS  # no grid point uses exactly all of the budget
    assert 0.99 < use < 1.0


def test_no_draw_in_budget_is_an_error(space):
    with pytest.raises(RuntimeError, match="no candidate within budget in 1000 random draws"):
        draw_in_budget(space, parse_budget("5%flops"), 0.02, np.random.default_rng(0))


# --- along the safe ratios (AOFP) ---------------------------------------------------------------


def test_safe_ratios_give_the_direction_with_half_a_step_of_floor(space):
    budget = parse_budget("40%flops")
    safe = {name: 0.05 * (i % 4) for i, name in enumerate(space.group_names)}
    direction = {name: r + 0.025 for name, r in safe.items()}
    assert along_safe_ratios(space, budget, safe) == scale_to_budget(space, budget, direction)
    factors = {name: 0.5 + 0.1 * i for i, name in enumerate(space.group_names)}
    expected = scale_to_budget(space, budget, {name: d * factors[name] for name, d in direction.items()})
    assert along_safe_ratios(space, budget, safe, factors) == expected


def test_groups_with_no_safe_margin_still_share_the_cut(space):
    ratios = along_safe_ratios(space, parse_budget("60%flops"), dict.fromkeys(space.group_names, 0.0))
    assert len(set(ratios.values())) == 1 and set(ratios.values()) != {0.0}
    tolerant = space.group_names[-1]
    skewed = along_safe_ratios(space, parse_budget("60%flops"), {**dict.fromkeys(space.group_names, 0.0), tolerant: 0.6})
    assert skewed[tolerant] == max(skewed.values()) > skewed[space.group_names[0]]


# --- the neighbourhood -------------------------------------------------------------------------


def test_the_first_step_is_the_allocation_itself_and_draws_nothing():
    rng = np.random.default_rng(0)
    seen = []
    found = neighbourhood(rng, ["a", "b"], lambda f: seen.append(f) or "fit", first=True)
    assert found == ("fit", True) and seen == [{"a": 1.0, "b": 1.0}]
    assert rng.uniform() == np.random.default_rng(0).uniform()  # the generator was not touched


def test_neighbours_scale_each_group_by_a_factor_in_half_to_one_and_a_half():
    seen = []
    found = neighbourhood(np.random.default_rng(4), ["a", "b", "c"], lambda f: seen.append(f) or f, first=False)
    reference = np.random.default_rng(4)
    expected = {name: float(reference.uniform(0.5, 1.5)) for name in ["a", "b", "c"]}
    assert found == (expected, False) and seen == [expected]


def test_a_neighbour_that_does_not_fit_is_drawn_again():
    tries = []

    def allocate(factors):
        tries.append(factors)
        return "fit" if len(tries) == 3 else None

    assert neighbourhood(np.random.default_rng(1), ["a"], allocate, first=True) == ("fit", False)
    assert tries[0] == {"a": 1.0} and tries[1] != tries[2] and all(0.5 <= t["a"] < 1.5 for t in tries[1:])


def test_the_neighbourhood_gives_up_after_its_tries():
    tries = []
    assert neighbourhood(np.random.default_rng(1), ["a"], lambda f: tries.append(f), first=False) is None
    assert len(tries) == allocation.NEIGHBOUR_TRIES == 100
    assert neighbourhood(np.random.default_rng(1), ["a"], lambda f: None, first=False, tries=3) is None


# --- filling the budget ------------------------------------------------------------------------


def test_filling_gives_back_every_width_that_still_fits_and_no_more():
    torch.manual_seed(0)
    space = PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28))
    space.keep_widths({g.name: list(range(8, g.channels, 8)) for g in space.groups})  # coarse: multiples of 8
    budget = parse_budget("50%flops")
    limit = budget.primary.limit(space.base_cost)
    rng = np.random.default_rng(0)
    for _ in range(5):
        scaled = scale_to_budget(space, budget, {g.name: float(rng.uniform(0.01, 1)) for g in space.groups})
        filled = fill_budget(space, budget, scaled)
        before, after = space.kept_channels(scaled), space.kept_channels(filled)
        assert all(after[n] >= before[n] for n in before)  # only ever gives channels back
        assert space.cost(scaled).macs <= space.cost(filled).macs <= limit
        # and no group can take its next wider width without breaking the budget
        for g in space.groups:
            wider = [w for w in (g.widths or []) if w > after[g.name]]
            if wider:
                trial = {**after, g.name: wider[0]}
                assert space.cost_of_widths(trial).macs > limit, g.name
