"""Budget allocations, held once: the ratio grid, the bisection to a budget, and the allocations built on them.

A ratio is the fraction of a group's channels removed (0: keep all), one per group, keyed by group
name: ``{"layer1.0.conv1": 0.35, ...}``. Ratios live on each group's grid, ``low, low + step, ...``
up to the group's ``high`` (``space.config.step``, 0.05 by default), rounded to 6 decimals.

- ``ratio_grid``, ``grid_top``, ``snap``: the grid.
- ``bisect_budget``: the largest cut along one parameter that still meets a budget.
- ``scale_to_budget``: ratios along a direction, scaled to the budget (EagleEye's candidates).
- ``uniform_at_budget``: the same ratio in every group, the largest that fits (the uniform baseline).
- ``fill_budget``: an allocation given back the channels that still fit, one width at a time.
- ``draw_in_budget``: EagleEye's random candidate (Li et al., ECCV 2020).
- ``along_safe_ratios``: the budget spread along per-group safe ratios (AOFP, Ding et al. 2019).
- ``neighbourhood``: the local search around an allocation, by random per-group factors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from autoprune.budget import Budget
from autoprune.pruning.base import Space

T = TypeVar("T")

# bisection steps of scale_to_budget: the scale to 2**-24 of its range, a ratio to within 5e-4 even for a direction
# weight of 1e-4 (a range of 8000), a hundredth of the grid's step; each step is one exact cost count
SCALE_STEPS = 24
MAX_DRAWS = 1000  # draw_in_budget's random directions before it gives up
NEIGHBOURHOOD = (0.5, 1.5)  # a neighbour's per-group factors are drawn uniformly from this range
NEIGHBOUR_TRIES = 100  # neighbourhood's draws before it gives up


# --- the grid ----------------------------------------------------------------------------------


def _steps(low: float, high: float, step: float) -> int:
    return int((high - low) / step + 1e-9)


def ratio_grid(low: float, high: float, step: float) -> list[float]:
    """The grid ``[low, low + step, ...]`` up to ``high`` (never past it), each point rounded to 6 decimals.

    ``ratio_grid(0.1, 0.83, 0.07)`` is ``[0.1, 0.17, ..., 0.8]`` (11 points); ``low == high`` gives ``[low]``.
    """
    return [round(low + i * step, 6) for i in range(_steps(low, high, step) + 1)]


def grid_top(low: float, high: float, step: float) -> float:
    """The last point of ``ratio_grid(low, high, step)``: ``high`` snapped down onto the grid."""
    return round(low + _steps(low, high, step) * step, 6)


def snap(value: float, low: float, high: float, step: float) -> float:
    """``value`` clipped to ``[low, grid_top(low, high, step)]`` and rounded to the nearest grid point."""
    value = min(max(value, low), grid_top(low, high, step))
    return round(low + round((value - low) / step) * step, 6)


# --- the bisection -----------------------------------------------------------------------------


def bisect_budget(
    build: Callable[[float], T], fits: Callable[[T], bool], low: float, high: float, *, iterations: int,
    try_low: bool = False,
) -> tuple[float, T] | None:
    """The smallest parameter ``x`` in ``[low, high]`` whose ``build(x)`` ``fits``, by ``iterations`` halvings.

    ``build`` must cut more as ``x`` grows (so that ``fits`` turns true once and stays true). Returns
    ``(x, build(x))``: the candidate that uses the most of the budget along this parameter, within
    ``(high - low) / 2**iterations`` of the boundary. None when even ``build(high)`` does not fit.
    ``try_low``: return ``low`` itself when it fits, before bisecting. ``build`` runs ``iterations + 1``
    times (``+ 2`` with ``try_low``).
    """
    best = build(high)
    if not fits(best):
        return None
    if try_low:
        at_low = build(low)
        if fits(at_low):
            return low, at_low
    for _ in range(iterations):
        mid = (low + high) / 2
        candidate = build(mid)
        if fits(candidate):
            high, best = mid, candidate
        else:
            low = mid
    return high, best


def _fits(space: Space, budget: Budget) -> Callable[[Mapping[str, float]], bool]:
    return lambda ratios: budget.feasible(space.cost(ratios), space.base_cost)


# --- allocations -------------------------------------------------------------------------------


def scale_to_budget(space: Space, budget: Budget, direction: Mapping[str, float]) -> dict[str, float] | None:
    """Ratios ``snap(s * direction[name])`` per group for the smallest scale ``s`` within ``budget``.

    ``direction`` maps group names to non-negative weights (a missing group weighs 0 and keeps its
    lowest ratio). Cost falls as ``s`` grows, so a bisection (``SCALE_STEPS`` steps) finds the
    candidate that uses the most of the budget along this direction: a random direction gives
    EagleEye-style candidates that land in the budget band by construction (Li et al., ECCV 2020),
    the all-ones direction gives uniform pruning. Returns ``{group: ratio}`` for every group, or
    None when even the largest ratios of the direction do not fit.
    """
    step = space.config.step
    groups = [g for g in space.groups if direction.get(g.name, 0.0) > 0]
    if not groups:
        return None

    def ratios_at(scale: float) -> dict[str, float]:
        return {g.name: snap(scale * direction.get(g.name, 0.0), g.low, g.high, step) for g in space.groups}

    found = bisect_budget(ratios_at, _fits(space, budget), 0.0, max(g.high / direction[g.name] for g in groups),
                          iterations=SCALE_STEPS, try_low=True)
    return None if found is None else found[1]


def fill_budget(space: Space, budget: Budget, ratios: Mapping[str, float]) -> dict[str, float]:
    """``ratios`` with channels given back while every constraint of ``budget`` still holds: the most-pruned group
    first, each step to the next wider width the group keeps (its next lower grid ratio that changes the width),
    in passes until no group can widen. A direction scaled onto the budget stops where the next scale would
    break it, and with coarse widths (efficient widths of 8 channels) that left up to a fifth of the budget
    unused; filled, the candidate uses it. Returns every group's ratio; a group already at its ``low`` stays."""
    step, fits = space.config.step, _fits(space, budget)
    filled = {g.name: float(ratios.get(g.name, g.low)) for g in space.groups}
    widened = True
    while widened:
        widened = False
        for g in sorted(space.groups, key=lambda g: -filled[g.name]):
            width = space.kept_channels({g.name: filled[g.name]})[g.name]
            for lower in reversed([r for r in ratio_grid(g.low, g.high, step) if r < filled[g.name]]):
                if space.kept_channels({g.name: lower})[g.name] > width:
                    if fits({**filled, g.name: lower}):
                        filled[g.name], widened = lower, True
                    break
    return filled


def uniform_at_budget(space: Space, budget: Budget) -> dict[str, float] | None:
    """One ratio in every group, the largest on the grid that fits ``budget`` (each group's ratio
    clipped to its own bounds): the uniform baseline every search is compared with, and the warm
    start. Returns ``{group: ratio}``, or None when even every group at its ``high`` does not fit.
    """
    return scale_to_budget(space, budget, dict.fromkeys(space.group_names, 1.0))


def draw_in_budget(
    space: Space, budget: Budget, tolerance: float, rng: np.random.Generator
) -> tuple[dict[str, float], int, float]:
    """One EagleEye candidate (Li et al., ECCV 2020): ``(ratios, random draws it took, budget use)``.

    Each draw is a direction uniform in every group's ``[low, high]``, scaled to the budget by
    ``scale_to_budget``; the first whose use of the budget's first constraint (cost / limit, a
    fraction <= 1) reaches ``1 - tolerance`` is taken, otherwise the best of ``MAX_DRAWS``. Raises
    RuntimeError when no draw fits at all.
    """
    limit = budget.primary.limit(space.base_cost)
    best, best_use = None, -1.0
    for draws in range(1, MAX_DRAWS + 1):
        direction = {g.name: float(rng.uniform(g.low, g.high)) for g in space.groups}
        ratios = scale_to_budget(space, budget, direction)
        if ratios is None:
            continue
        use = getattr(space.cost(ratios), budget.primary.metric) / limit
        if use > best_use:
            best, best_use = ratios, use
        if use >= 1.0 - tolerance:
            break
    if best is None:
        raise RuntimeError(f"no candidate within budget in {MAX_DRAWS} random draws")
    return best, draws, best_use


def along_safe_ratios(
    space: Space, budget: Budget, safe: Mapping[str, float], factors: Mapping[str, float] | None = None
) -> dict[str, float] | None:
    """The safe ratios (per-group results of the sensitivity phase, as in AOFP, Ding et al. 2019), times
    optional per-group ``factors``, scaled together until ``budget`` is met.

    Groups that tolerate pruning give most; a group with no safe margin still gets half a grid step
    of direction, so an over-tight budget is spread rather than impossible. Returns ``{group: ratio}``
    or None (see ``scale_to_budget``).
    """
    floor = space.config.step / 2
    direction = {name: (ratio + floor) * (factors or {}).get(name, 1.0) for name, ratio in safe.items()}
    return scale_to_budget(space, budget, direction)


def neighbourhood(
    rng: np.random.Generator, names: Sequence[str], allocate: Callable[[dict[str, float]], T | None], *,
    first: bool, tries: int = NEIGHBOUR_TRIES,
) -> tuple[T, bool] | None:
    """The local search around an allocation: ``allocate(factors)`` with per-group factors, until one fits.

    With ``first``, the factors are all 1 (the allocation itself, no draw from ``rng``); otherwise each
    of ``names`` gets a factor uniform in ``NEIGHBOURHOOD``. A None from ``allocate`` (no fit) is
    retried with fresh factors, up to ``tries`` times. Returns ``(result, whether it was the
    allocation itself)``, or None. The binary (AOFP) and PFP strategies search their own
    allocations' neighbourhoods with it.
    """
    for _ in range(tries):
        factors = dict.fromkeys(names, 1.0) if first else {name: float(rng.uniform(*NEIGHBOURHOOD)) for name in names}
        found = allocate(factors)
        if found is not None:
            return found, first
        first = False
    return None
