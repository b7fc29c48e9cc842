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
from autoprune.pruning.space import Cost, PruningSpace


@dataclass
class SearchContext:
    space: PruningSpace
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
        return [proxy_acc]

    def ask(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """Start a trial and return it with its per-group ratios (the warm start comes first)."""
        if not self._warm_started:
            self._warm_started = True
            if not study_has_attr(study, "warm_start"):
                ratios = scale_to_budget(self.context, dict.fromkeys(self.context.space.group_names, 1.0))
                if ratios is not None:
                    return ask_fixed(study, self.context.space, ratios, {"warm_start": True})
        return self.propose(study)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        trial = study.ask()
        return trial, suggest_ratios(trial, self.context.space)


def study_has_attr(study: optuna.Study, key: str) -> bool:
    """Whether any trial of the study carries the user attribute ``key`` (set true)."""
    return any(t.user_attrs.get(key) for t in study.get_trials(deepcopy=False))


def ask_fixed(
    study: optuna.Study, space: PruningSpace, ratios: dict[str, float], attrs: dict
) -> tuple[optuna.Trial, dict[str, float]]:
    """A trial with the given ratios, recorded in the study like any sampled one."""
    study.enqueue_trial({k: round(v, 6) for k, v in ratios.items()}, user_attrs=attrs)
    trial = study.ask()
    return trial, suggest_ratios(trial, space)


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


def snap(value: float, low: float, high: float, step: float) -> float:
    low, high = ratio_grid(low, high, step)
    value = min(max(value, low), high)
    return round(low + round((value - low) / step) * step, 6)


def scale_to_budget(context: SearchContext, direction: dict[str, float]) -> dict[str, float] | None:
    """Ratios ``s * direction`` (snapped to the grid) for the smallest scale ``s`` within budget.

    Cost falls as ``s`` grows, so a bisection finds the candidate that uses the most of the budget
    along this direction: a random direction gives EagleEye-style candidates that land in the
    budget band by construction, the all-ones direction gives uniform pruning. None when even
    the largest ratios of the direction do not fit.
    """
    space, budget, base = context.space, context.budget, context.space.base_cost
    step = space.config.step
    groups = [g for g in space.groups if direction.get(g.name, 0.0) > 0]

    def ratios_at(scale: float) -> dict[str, float]:
        return {g.name: snap(scale * direction.get(g.name, 0.0), g.low, g.high, step) for g in space.groups}

    high = max(g.high / direction[g.name] for g in groups) if groups else 0.0
    if not groups or not budget.feasible(space.cost(ratios_at(high)), base):
        return None
    low = 0.0
    if budget.feasible(space.cost(ratios_at(low)), base):
        return ratios_at(low)
    for _ in range(40):
        mid = (low + high) / 2
        if budget.feasible(space.cost(ratios_at(mid)), base):
            high = mid
        else:
            low = mid
    return ratios_at(high)


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
