"""EagleEye's random search: uniform per-group ratios, kept only when the cost lands just under budget."""

from __future__ import annotations

import numpy as np
import optuna

from autoprune.search.base import Strategy, ratio_grid, register_strategy, suggest_ratios

MAX_DRAWS = 20000


@register_strategy("random", "EagleEye: uniform random ratios, accepted within --tolerance below the budget")
class RandomStrategy(Strategy):
    """Rejection sampling on the exact cost model, so rejected draws cost microseconds, not trials.

    A draw is accepted when every constraint holds and the primary one is used to at least
    ``1 - tolerance`` of its limit. The generator is seeded by (seed, trial number), so a resumed
    run draws the same candidates as an uninterrupted one.
    """

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.context.seed)

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        ctx = self.context
        space, budget, base = ctx.space, ctx.budget, ctx.space.base_cost
        rng = np.random.default_rng([ctx.seed, len(study.trials)])
        grids = [np.arange(*_bounds(g.low, g.high, space.config.step)) for g in space.groups]
        limit = budget.primary.limit(base)
        best, best_use = None, -1.0
        draws = 0
        for draws in range(1, MAX_DRAWS + 1):
            ratios = {g.name: float(rng.choice(grid)) for g, grid in zip(space.groups, grids)}
            cost = space.cost(ratios)
            if not budget.feasible(cost, base):
                continue
            use = getattr(cost, budget.primary.metric) / limit
            if use > best_use:
                best, best_use = ratios, use
            if use >= 1.0 - ctx.tolerance:
                break
        if best is None:
            raise RuntimeError(f"no feasible candidate in {MAX_DRAWS} random draws")
        study.enqueue_trial(
            {k: round(v, 6) for k, v in best.items()},
            user_attrs={"draws": draws, "budget_use": round(best_use, 4)},
        )
        trial = study.ask()
        return trial, suggest_ratios(trial, space)


def _bounds(low: float, high: float, step: float) -> tuple[float, float, float]:
    low, high = ratio_grid(low, high, step)
    return low, high + step / 2, step
