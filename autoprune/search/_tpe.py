"""Optuna's multivariate TPE, maximising proxy accuracy over directions mapped onto the budget."""

from __future__ import annotations

import optuna

from autoprune.search.base import Strategy, register_strategy

STARTUP_TRIALS = 10  # random directions before TPE models the good ones


@register_strategy("tpe", "Optuna TPE (multivariate) over directions between the groups, each scaled onto the budget")
class TPEStrategy(Strategy):
    """TPE chooses each trial's direction over the groups; ``Strategy.propose`` scales it onto the budget, so
    every trial is within it and TPE learns only how to share the budget between the groups."""

    def seeded_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP_TRIALS)
