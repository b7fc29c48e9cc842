"""Provable filter pruning's own allocation (Liebenwein, Baykal et al., ICLR 2020).

PFP does not take a ratio per layer: it keeps the filters that sampling by sensitivity needs to
approximate the layer's output within a relative error epsilon (with probability 1 - delta). Each
group's channel sensitivities (``--criterion pfp``: a channel's largest share of a next-layer
pre-activation) sum to S; the sample size is ``m = ceil(K (6 + 2 eps) S log(8 G / delta) / eps^2)``
for G groups, and the group keeps the expected number of distinct channels among m draws with
probability proportional to sensitivity. Groups with concentrated sensitivity keep few channels;
groups where every channel matters keep many, at the same error bound for all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import optuna
import torch

from autoprune.search.allocation import bisect_budget, neighbourhood, snap
from autoprune.search.base import (
    FixedStrategy,
    SearchContext,
    ask_fixed,
    register_strategy,
    study_has_attr,
)

SAMPLE_CONSTANT = 3.0  # K of the sample-size bound
DELTA = 0.1  # failure probability of the bound over all groups
_EPS_RANGE = (1e-4, 1e6)  # where the bisection for the budget looks
EPS_STEPS = 60  # bisection steps on log eps: the bound to 2**-60 of its log range


def pfp_kept(sensitivity: Sequence[float], eps: float, groups: int, delta: float = DELTA) -> int:
    """Channels a group keeps at error bound ``eps``: the expected distinct channels among the m draws."""
    s = torch.as_tensor(sensitivity, dtype=torch.float64).clamp_min(0)
    total = float(s.sum())
    if total <= 0:  # no channel carries anything measurable: nothing to tell them apart by
        return len(s)
    draws = math.ceil(SAMPLE_CONSTANT * (6 + 2 * eps) * total * math.log(8 * groups / delta) / eps**2)
    p = s / total
    distinct = float((-torch.expm1(draws * torch.log1p(-p.clamp_max(1 - 1e-12)))).sum())
    return min(len(s), max(1, math.ceil(distinct - 1e-9)))


def pfp_ratios(context: SearchContext, eps: Mapping[str, float]) -> dict[str, float]:
    """Each group's ratio at its error bound ``eps[name]``, snapped to the grid within its bounds."""
    space = context.space
    ratios = {}
    for g in space.groups:
        if g.importance is None:
            raise RuntimeError("the pfp strategy needs the space's channel sensitivities (ranked here, not handed over)")
        kept = pfp_kept(g.importance, eps[g.name], len(space.groups))
        ratios[g.name] = snap(1.0 - kept / g.channels, g.low, g.high, space.config.step)
    return ratios


def allocate_at_budget(context: SearchContext, factors: Mapping[str, float]) -> tuple[dict[str, float], float] | None:
    """The ratios at ``eps * factors[name]`` per group for the smallest ``eps`` within budget, and that eps.

    A larger bound keeps fewer channels, so cost falls as eps grows: a bisection on log eps
    (``allocation.bisect_budget``, ``EPS_STEPS`` steps over ``_EPS_RANGE``) finds the allocation that
    uses the most of the budget. Returns ``({group: ratio}, eps)``, or None when even the largest eps
    does not fit.
    """
    space, budget, base = context.space, context.budget, context.space.base_cost

    def ratios_at(log_eps: float) -> dict[str, float]:
        return pfp_ratios(context, {name: math.exp(log_eps) * f for name, f in factors.items()})

    low, high = (math.log(e) for e in _EPS_RANGE)
    found = bisect_budget(ratios_at, lambda ratios: budget.feasible(space.cost(ratios), base), low, high,
                          iterations=EPS_STEPS)
    return None if found is None else (found[1], math.exp(found[0]))


@register_strategy("pfp", "provable filter pruning's allocation (needs --criterion pfp): every group keeps what its "
                   "sensitivities need for one error bound, --pfp-eps or the one that meets the budget; then its "
                   "neighbourhood")
class PFPStrategy(FixedStrategy):
    """The first candidate is PFP's allocation: one error bound for every group, ``--pfp-eps`` if given,
    otherwise the smallest that meets the budget. Later candidates scale each group's bound by a
    random factor in [0.5, 1.5] (and, without ``--pfp-eps``, fit the budget again), searching the
    neighbourhood of that allocation as the binary strategy does around its own."""

    _allocated: bool | None = None  # the first allocation was proposed (looked up once per run)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        """The allocation first (trial attribute ``allocation`` true), then its neighbours; each trial
        records its ``pfp_eps``. Raises RuntimeError when no neighbour meets the budget."""
        ctx = self.context
        first = self._allocated is None and not study_has_attr(study, "allocation")
        self._allocated = True
        rng = np.random.default_rng([ctx.seed, len(study.trials)])

        def allocate(factors: dict[str, float]) -> tuple[dict[str, float], float] | None:
            if ctx.pfp_eps is None:
                return allocate_at_budget(ctx, factors)
            return pfp_ratios(ctx, {name: ctx.pfp_eps * f for name, f in factors.items()}), ctx.pfp_eps

        found = neighbourhood(rng, ctx.space.group_names, allocate, first=first)
        if found is None:
            raise RuntimeError("no PFP allocation meets the budget")
        (ratios, eps), first = found
        return ask_fixed(study, ctx.space, ratios, {"allocation": first, "pfp_eps": round(eps, 6)})
