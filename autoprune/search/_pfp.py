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

from autoprune.search.base import (
    SearchContext,
    Strategy,
    ask_fixed,
    register_strategy,
    snap,
    study_has_attr,
)

SAMPLE_CONSTANT = 3.0  # K of the sample-size bound
DELTA = 0.1  # failure probability of the bound over all groups
_EPS_RANGE = (1e-4, 1e6)  # where the bisection for the budget looks


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

    A larger bound keeps fewer channels, so cost falls as eps grows: a bisection on log eps finds
    the allocation that uses the most of the budget. None when even the largest eps does not fit.
    """
    space, budget, base = context.space, context.budget, context.space.base_cost

    def ratios_at(eps: float) -> dict[str, float]:
        return pfp_ratios(context, {name: eps * f for name, f in factors.items()})

    low, high = (math.log(e) for e in _EPS_RANGE)
    if not budget.feasible(space.cost(ratios_at(math.exp(high))), base):
        return None
    for _ in range(60):
        mid = (low + high) / 2
        if budget.feasible(space.cost(ratios_at(math.exp(mid))), base):
            high = mid
        else:
            low = mid
    return ratios_at(math.exp(high)), math.exp(high)


@register_strategy("pfp", "provable filter pruning's allocation (needs --criterion pfp): every group keeps what its "
                   "sensitivities need for one error bound, --pfp-eps or the one that meets the budget; then its "
                   "neighbourhood")
class PFPStrategy(Strategy):
    """The first candidate is PFP's allocation: one error bound for every group, ``--pfp-eps`` if given,
    otherwise the smallest that meets the budget. Later candidates scale each group's bound by a
    random factor in [0.5, 1.5] (and, without ``--pfp-eps``, fit the budget again), searching the
    neighbourhood of that allocation as the binary strategy does around its own."""

    _allocated: bool | None = None  # the first allocation was proposed (looked up once per run)

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.context.seed)

    def propose(self, study: optuna.Study) -> tuple[optuna.Trial, dict[str, float]]:
        ctx = self.context
        first = self._allocated is None and not study_has_attr(study, "allocation")
        self._allocated = True
        rng = np.random.default_rng([ctx.seed, len(study.trials)])
        for _ in range(100):
            factors = {name: 1.0 if first else float(rng.uniform(0.5, 1.5)) for name in ctx.space.group_names}
            if ctx.pfp_eps is not None:
                eps = ctx.pfp_eps
                ratios = pfp_ratios(ctx, {name: eps * f for name, f in factors.items()})
            else:
                found = allocate_at_budget(ctx, factors)
                if found is None:
                    first = False
                    continue
                ratios, eps = found
            return ask_fixed(study, ctx.space, ratios, {"allocation": first, "pfp_eps": round(eps, 6)})
        raise RuntimeError("no PFP allocation meets the budget")
