"""AOFP-style binary search: per-group safe ratios first, then the budget allocated along them."""

from __future__ import annotations

import numpy as np
import optuna

from autoprune.search.allocation import along_safe_ratios, neighbourhood
from autoprune.search.base import FixedStrategy, ask_fixed, register_strategy, study_has_attr


@register_strategy("binary", "per-group binary search for the largest safe ratio (AOFP), then the budget allocated along those ratios")
class BinaryStrategy(FixedStrategy):
    """Needs ``context.safe_ratios`` (from the sensitivity phase).

    The first candidate scales the safe ratios together until the budget is met: groups that
    tolerate pruning give most (``allocation.along_safe_ratios``). Later candidates perturb each
    group's share by a random factor in [0.5, 1.5] and scale again, searching the neighbourhood of
    that allocation (``allocation.neighbourhood``).
    """

    _allocated: bool | None = None  # the first allocation was proposed (looked up once per run)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The allocation first (trial attribute ``allocation`` true), then its neighbours. Raises
        RuntimeError without safe ratios, or when no neighbour meets the budget."""
        ctx = self.context
        safe = ctx.safe_ratios
        if safe is None:
            raise RuntimeError("the binary strategy needs the sensitivity phase's safe ratios")
        first = self._allocated is None and not study_has_attr(study, "allocation")
        self._allocated = True
        rng = np.random.default_rng([ctx.seed, len(study.trials)])
        found = neighbourhood(rng, list(safe), lambda factors: along_safe_ratios(ctx.space, ctx.budget, safe, factors),
                              first=first)
        if found is None:
            raise RuntimeError("no allocation of the safe ratios meets the budget")
        ratios, first = found
        return ask_fixed(study, ctx.space, ratios, {"allocation": first})
