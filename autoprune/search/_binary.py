"""AOFP-style binary search: per-group safe ratios first, then the budget allocated along them."""

from __future__ import annotations

import numpy as np
import optuna

from autoprune.search.base import Strategy, ask_fixed, register_strategy, study_has_attr
from autoprune.search.sensitivity import allocate_budget


@register_strategy("binary", "per-group binary search for the largest safe ratio (AOFP), then the budget allocated along those ratios")
class BinaryStrategy(Strategy):
    """Needs ``context.safe_ratios`` (from the sensitivity phase).

    The first candidate scales the safe ratios together until the budget is met: groups that
    tolerate pruning give most. Later candidates perturb each group's share by a random factor
    in [0.5, 1.5] and scale again, searching the neighbourhood of that allocation.
    """

    _allocated: bool | None = None  # the first allocation was proposed (looked up once per run)

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.context.seed)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        ctx = self.context
        safe = ctx.safe_ratios
        if safe is None:
            raise RuntimeError("the binary strategy needs the sensitivity phase's safe ratios")
        first = self._allocated is None and not study_has_attr(study, "allocation")
        self._allocated = True
        rng = np.random.default_rng([ctx.seed, len(study.trials)])
        for _ in range(100):
            factors = None if first else {name: float(rng.uniform(0.5, 1.5)) for name in safe}
            ratios = allocate_budget(ctx, safe, factors)
            if ratios is not None:
                return ask_fixed(study, ctx.space, ratios, {"allocation": first})
            first = False
        raise RuntimeError("no allocation of the safe ratios meets the budget")
