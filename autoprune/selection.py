"""Which searched candidates are fine-tuned: the best proxies, or the best one and a spread along the front."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import optuna

from autoprune.pareto import non_dominated

if TYPE_CHECKING:
    from autoprune.pruning.space import PruningSpace


def trial_ratios(t: optuna.trial.FrozenTrial, space: PruningSpace) -> dict[str, float]:
    return {g.name: float(t.params.get(g.name, 0.0)) for g in space.groups}


def choose_for_finetune(
    study: optuna.Study, k: int, cost: Callable[[optuna.trial.FrozenTrial], float], *, spread: bool
) -> list[optuna.trial.FrozenTrial]:
    """The K candidates worth fine-tuning: the best proxies, or (``spread``) the best one plus
    K-1 spread evenly in cost along the proxy-vs-cost front. Identical ratios count once."""
    unique: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("feasible") and t.user_attrs.get("proxy_acc") is not None:
            unique.setdefault(tuple(sorted(t.params.items())), t)
    ranked = sorted(unique.values(), key=lambda t: (-t.user_attrs["proxy_acc"], t.number))
    if not spread or k <= 1:
        return ranked[:k]
    front = non_dominated(ranked, lambda t: t.user_attrs["proxy_acc"], cost)
    chosen = ranked[:1]
    for index in np.linspace(0, len(front) - 1, num=min(k - 1, len(front))).round().astype(int):
        if front[index] not in chosen:
            chosen.append(front[index])
    chosen += [t for t in ranked if t not in chosen][: k - len(chosen)]
    return chosen
