"""Optuna's multivariate TPE, maximising proxy accuracy with the budget as a constraint."""

from __future__ import annotations

import optuna

from autoprune.search.base import Strategy, register_strategy


@register_strategy("tpe", "Optuna TPE (multivariate), the budget as a constraint")
class TPEStrategy(Strategy):
    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=self.context.seed, multivariate=True, n_startup_trials=10)
