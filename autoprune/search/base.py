"""The strategy interface: a sampler for the run's Optuna study, and ``ask`` for the next ratios.

Every strategy runs over an Optuna study, so all of them share one storage (``study.db``), one
resume logic and one trials schema; they differ in how the next candidate is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna

from autoprune.budget import Budget
from autoprune.pruning.base import Space
from autoprune.pruning.space import Cost
from autoprune.registry import Registry
from autoprune.search.allocation import fill_budget, grid_top, scale_to_budget, uniform_at_budget

DIRECTION = "direction:"  # a sampled parameter per group: its weight in the direction scaled onto the budget
DIRECTION_RANGE = (0.01, 1.0)  # the weights' range: positive, so that every direction reaches the smallest subnet
BUDGET_LEVEL = "budget_level"  # the sampled share of the budget's first constraint (``Strategy.spans_budget``)


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
    """Chooses the next candidate. ``directions``/``objectives`` say what the study optimises.

    A strategy is an Optuna sampler (``sampler``) whose choices ``propose`` maps onto the budget, so that
    every candidate is within it by construction; ``FixedStrategy`` is the kind that chooses ratios itself.
    """

    name: str = ""
    directions: tuple[str, ...] = ("maximize",)
    # Fine-tune candidates spread along the proxy-vs-cost front rather than the top K by proxy.
    spread_finetune: bool = False
    # Each trial also chooses how much of the budget to fill (``propose``): a front below the budget.
    spans_budget: bool = False

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self._warm_started = not context.warm_start  # looked up in the study once, not per ask

    def sampler(self, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the run's study, which holds ``resumed_at`` trials already. Seeded by the run's seed,
        and on a resumed run by (seed, ``resumed_at``): a sampler's generator restarts with the process, and
        seeded as before it would draw the first invocation's candidates again."""
        seed = self.context.seed
        if resumed_at:
            seed = int(np.random.SeedSequence([seed, resumed_at]).generate_state(1)[0])
        return self.seeded_sampler(seed)

    @abstractmethod
    def seeded_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The strategy's Optuna sampler, seeded with ``seed``."""

    def objectives(self, proxy_acc: float, cost: Cost) -> list[float]:
        """The values told to the study, one per entry of ``directions``: here the proxy accuracy alone."""
        return [proxy_acc]

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """Start a trial and return it with its per-group ratios (the warm start comes first)."""
        if not self._warm_started:
            self._warm_started = True
            if not study_has_attr(study, "warm_start"):
                return self.warm_start(study)
        return self.propose(study)

    def warm_start(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The uniform candidate (``allocation.uniform_at_budget``): here every group's weight of the direction
        equal, and the whole budget, enqueued as the sampler's parameters so that the sampler learns from it."""
        params = {DIRECTION + name: DIRECTION_RANGE[1] for name in sampled_groups(self.context.space)}
        if self.spans_budget:
            params[BUDGET_LEVEL] = 1.0
        study.enqueue_trial(params, user_attrs={"warm_start": True})
        return self.propose(study)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The sampler's candidate, within the budget by construction: the sampler chooses a direction over the
        groups (a weight in ``DIRECTION_RANGE`` each, parameters ``direction:<group>``), and the ratios along it
        are scaled onto the budget (``allocation.scale_to_budget``, every constraint at once, latency included)
        and given back the channels that still fit (``allocation.fill_budget``).
        With ``spans_budget`` the sampler also chooses the share of the budget's first constraint to fill
        (``budget_level``, from the smallest subnet's share up to 1), so that a front spans the costs below
        the budget. Where no ratios along the direction fit (the budget is out of the space's reach), the
        smallest subnet is returned, and recorded as over the budget."""
        trial = study.ask()
        ctx = self.context
        direction = {name: trial.suggest_float(DIRECTION + name, *DIRECTION_RANGE)
                     for name in sampled_groups(ctx.space)}
        budget = ctx.budget
        if self.spans_budget:
            lowest = lowest_level(ctx.space, budget)
            if lowest < 1.0:
                budget = budget.scaled(trial.suggest_float(BUDGET_LEVEL, lowest, 1.0))
        ratios = scale_to_budget(ctx.space, budget, direction)
        if ratios is None:
            return trial, smallest_ratios(ctx.space)
        if trial.user_attrs.get("warm_start"):  # the uniform ratios, as the uniform baseline has them
            return trial, ratios
        return trial, fill_budget(ctx.space, budget, ratios)


class FixedStrategy(Strategy):
    """A strategy that chooses each candidate's ratios itself and enqueues them (``ask_fixed``): the trial's
    parameters are the ratios, one per group, and Optuna's sampler only records them."""

    def seeded_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """Optuna's random sampler (the candidates themselves are enqueued, not sampled)."""
        return optuna.samplers.RandomSampler(seed=seed)

    def warm_start(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The uniform ratios (``allocation.uniform_at_budget``) as a fixed candidate, where they fit."""
        ratios = uniform_at_budget(self.context.space, self.context.budget)
        if ratios is None:
            return self.propose(study)
        return ask_fixed(study, self.context.space, ratios, {"warm_start": True})

    @abstractmethod
    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The next candidate after the warm start, through ``ask_fixed``."""


def sampled_groups(space: Space) -> list[str]:
    """The groups a sampler chooses a direction weight for: those whose grid has more than one point."""
    step = space.config.step
    return [g.name for g in space.groups if grid_top(g.low, g.high, step) > g.low]


def smallest_ratios(space: Space) -> dict[str, float]:
    """Every group at the top of its grid: the smallest subnet of the space."""
    return {g.name: grid_top(g.low, g.high, space.config.step) for g in space.groups}


def lowest_level(space: Space, budget: Budget) -> float:
    """The share of the budget's first constraint that the smallest subnet uses (cost / limit)."""
    metric = budget.primary.metric
    return getattr(space.cost(smallest_ratios(space)), metric) / budget.primary.limit(space.base_cost)


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
