"""Which searched candidates are fine-tuned: the best proxies, or the best one and a spread along the front."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoprune.candidate import COMPLETE, Candidate
from autoprune.pareto import non_dominated


def choose_for_finetune(candidates: Sequence[Candidate], k: int, cost: Callable[[Candidate], float], *,
                        spread: bool) -> list[Candidate]:
    """The K candidates worth fine-tuning, of those scored within the budget (state ``complete`` with a proxy
    accuracy): the best proxies (ties: the lower trial number), or (``spread``) the best one plus K-1 spread
    evenly in ``cost`` along the proxy-vs-cost front. One subnet counts once, the first kept: candidates of the
    same widths in every group (ratios a group's grid or its efficient widths snap together), or of the same
    ratios where the widths are not recorded."""
    unique: dict[tuple, Candidate] = {}
    for c in sorted(candidates, key=lambda c: c.number):
        if c.state == COMPLETE and c.proxy_acc is not None:
            unique.setdefault(tuple(sorted((c.widths or c.ratios).items())), c)
    ranked = sorted(unique.values(), key=lambda c: (-c.proxy_acc, c.number))
    if not spread or k <= 1:
        return ranked[:k]
    front = non_dominated(ranked, lambda c: c.proxy_acc, cost)
    chosen = ranked[:1]
    for index in np.linspace(0, len(front) - 1, num=min(k - 1, len(front))).round().astype(int):
        if front[index] not in chosen:
            chosen.append(front[index])
    chosen += [c for c in ranked if c not in chosen][: k - len(chosen)]
    return chosen
