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
from autoprune.pruning.base import Space
from autoprune.pruning.space import Cost
from autoprune.registry import Registry
from autoprune.search.allocation import grid_top, uniform_at_budget


@dataclass
class SearchContext:
    """What a strategy proposes in: the ``space`` and its ``budget``, the run's ``seed``, ``tolerance`` (a
    fraction: random's band below the budget), the study's planned ``trials``, and the options of some
    strategies (``warm_start``: the uniform ratios first; ``safe_ratios`` for binary; ``pfp_eps`` for pfp)."""

    space: Space
    budget: Budget
    seed: int
    tolerance: float
    warm_start: bool = False
    trials: int = 40
    safe_ratios: dict[str, float] | None = None  # per-group results of the sensitivity phase
    pfp_eps: float | None = None  # the pfp strategy's error bound; None: the one that meets the budget


class Strategy(ABC):
    """Chooses the next candidate. ``directions``/``objectives`` say what the study optimises."""

    name: str = ""
    directions: tuple[str, ...] = ("maximize",)
    # Fine-tune candidates spread along the proxy-vs-cost front rather than the top K by proxy.
    spread_finetune: bool = False

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self._warm_started = not context.warm_start  # looked up in the study once, not per ask

    @abstractmethod
    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the run's study."""

    def objectives(self, proxy_acc: float, cost: Cost) -> list[float]:
        """The values told to the study, one per entry of ``directions``: here the proxy accuracy alone."""
        return [proxy_acc]

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """Start a trial and return it with its per-group ratios (the warm start comes first)."""
        if not self._warm_started:
            self._warm_started = True
            if not study_has_attr(study, "warm_start"):
                ratios = uniform_at_budget(self.context.space, self.context.budget)
                if ratios is not None:
                    return ask_fixed(study, self.context.space, ratios, {"warm_start": True})
        return self.propose(study)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The next candidate after the warm start: here the sampler's, on the ratio grid."""
        trial = study.ask()
        return trial, suggest_ratios(trial, self.context.space)


def study_has_attr(study: optuna.Study, key: str) -> bool:
    """Whether any trial of the study carries the user attribute ``key`` (set true)."""
    return any(t.user_attrs.get(key) for t in study.get_trials(deepcopy=False))


def ask_fixed(
    study: optuna.Study, space: Space, ratios: dict[str, float], attrs: dict
) -> tuple[optuna.Trial, dict[str, float]]:
    """A trial with the given ratios, recorded in the study like any sampled one."""
    study.enqueue_trial({k: round(v, 6) for k, v in ratios.items()}, user_attrs=attrs)
    trial = study.ask()
    return trial, suggest_ratios(trial, space)


def suggest_ratios(trial: optuna.Trial, space: Space) -> dict[str, float]:
    """One ratio per group from the trial's sampler, on the group's grid (``allocation.grid_top``); the
    parameter name is the group name. A group whose grid has one point gets it without a parameter."""
    step = space.config.step
    ratios = {}
    for g in space.groups:
        high = grid_top(g.low, g.high, step)
        ratios[g.name] = round(trial.suggest_float(g.name, g.low, high, step=step), 6) if high > g.low else g.low
    return ratios


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(name: str, help: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Register a ``Strategy`` subclass under ``name`` (also set as its ``name``) with its ``--strategy`` help."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        return STRATEGIES.register(name, help)(cls)

    return wrap


def list_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return STRATEGIES.names()


def describe_strategies() -> dict[str, str]:
    """``{name: help}`` of every strategy, sorted by name: the ``--strategy`` choices."""
    return STRATEGIES.describe()


def get_strategy(name: str, context: SearchContext) -> Strategy:
    """A new strategy ``name`` over ``context``; an unknown name is a ``UserError`` that lists the strategies."""
    return STRATEGIES.get(name).obj(context)
