"""The strategy interface: a sampler for the run's Optuna study, and ``ask`` for the next ratios.

Every strategy runs over an Optuna study, so all of them share one storage (``study.db``), one
resume logic and one trials schema; they differ in how the next candidate is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from autoprune.budget import Budget
from autoprune.errors import UserError
from autoprune.pruning.space import PruningSpace


@dataclass
class SearchContext:
    space: PruningSpace
    budget: Budget
    seed: int
    tolerance: float


class Strategy(ABC):
    name: str = ""

    def __init__(self, context: SearchContext) -> None:
        self.context = context

    @abstractmethod
    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the run's study."""

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """Start a trial and return it with its per-group ratios."""
        trial = study.ask()
        return trial, suggest_ratios(trial, self.context.space)


def suggest_ratios(trial: optuna.Trial, space: PruningSpace) -> dict[str, float]:
    """One ratio per group, on the space's grid; the parameter name is the group name."""
    step = space.config.step
    ratios = {}
    for g in space.groups:
        low, high = ratio_grid(g.low, g.high, step)
        ratios[g.name] = round(trial.suggest_float(g.name, low, high, step=step), 6) if high > low else low
    return ratios


def ratio_grid(low: float, high: float, step: float) -> tuple[float, float]:
    """Snap ``high`` down onto the grid that starts at ``low``."""
    n = int((high - low) / step + 1e-9)
    return low, round(low + n * step, 6)


_STRATEGIES: dict[str, tuple[Callable[[SearchContext], Strategy], str]] = {}


def register_strategy(name: str, help: str):
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        _STRATEGIES[name] = (cls, help)
        return cls

    return wrap


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def describe_strategies() -> dict[str, str]:
    return {name: _STRATEGIES[name][1] for name in list_strategies()}


def get_strategy(name: str, context: SearchContext) -> Strategy:
    if name not in _STRATEGIES:
        raise UserError(f"unknown strategy '{name}' (choose from {', '.join(list_strategies())})")
    return _STRATEGIES[name][0](context)
