"""EagleEye's random search: random per-group ratios that land just under the budget."""

from __future__ import annotations

import numpy as np
import optuna

from autoprune.search.allocation import draw_in_budget
from autoprune.search.base import FixedStrategy, ask_fixed, register_strategy


@register_strategy("random", "EagleEye: random per-group ratios, landing within --tolerance below the budget")
class RandomStrategy(FixedStrategy):
    """Random candidates in the budget band by construction.

    EagleEye draws ratios uniformly and rejects all but those within a tolerance of the target
    (about 5% accepted at +-2% of 50% MACs on ResNet-20, 1% at +-0.5%). Here each draw is a
    uniform random direction over the groups, scaled by bisection on the exact cost model until
    it meets the budget (``allocation.draw_in_budget``); the grid can still leave a draw short of
    the band, and such draws are rejected (92% of draws are kept at +-2%, 41% at +-0.5%). The
    generator is seeded by (seed, trial number), so the same seed draws the same candidates.
    """

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """An EagleEye draw; the trial records its ``draws`` and ``budget_use``."""
        ctx = self.context
        rng = np.random.default_rng([ctx.seed, len(study.trials)])
        ratios, draws, use = draw_in_budget(ctx.space, ctx.budget, ctx.tolerance, rng)
        return ask_fixed(study, ctx.space, ratios, {"draws": draws, "budget_use": round(use, 4)})
