"""Optuna NSGA-II on two objectives, proxy accuracy up and cost down, under the budget ceiling."""

from __future__ import annotations

import optuna

from autoprune.pruning.space import Cost
from autoprune.search.base import Strategy, register_strategy


@register_strategy("nsga2", "Optuna NSGA-II: proxy accuracy vs cost, a whole front of candidates from the smallest subnet up to the budget")
class NSGA2Strategy(Strategy):
    """One run yields a front of candidates at different costs, every one within the budget.

    The cost objective is the metric of the budget's first constraint (MACs, params or latency). Each trial
    chooses a direction over the groups and the share of that constraint to fill (``Strategy.propose``), so
    the front spans the costs from the smallest subnet's up to the budget.
    """

    directions = ("maximize", "minimize")
    spread_finetune = True
    spans_budget = True

    def seeded_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        # a few generations even in short runs: 40 trials -> populations of 10
        population = max(4, min(50, self.context.trials // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)

    def objectives(self, proxy_acc: float, cost: Cost) -> list[float]:
        return [proxy_acc, float(getattr(cost, self.context.budget.primary.metric))]
