"""Every strategy's trials are within the budget by construction: the samplers' (tpe, nsga2) choose a direction
over the groups that is scaled onto the budget, whatever the budget's kind, joined constraints and latency
included; NSGA-II's trials also spread their cost below the budget."""

from __future__ import annotations

import optuna
import pytest
import torch
from tables import TiledTable

from autoprune.budget import parse_budget
from autoprune.candidate import candidates
from autoprune.measure.target import TorchTarget
from autoprune.models import create_model
from autoprune.pruning.space import PruningSpace
from autoprune.runners.trial import begin_trial
from autoprune.search import SearchContext, get_strategy
from autoprune.search.base import BUDGET_LEVEL, DIRECTION

pytestmark = pytest.mark.usefixtures("one_thread")

TRIALS = 24
BUDGETS = ["50%flops", "30%params", "45%flops,35%params", "50%latency", "60%latency,40%flops", "3.2ms"]


@pytest.fixture(scope="module")
def timed_space() -> PruningSpace:
    """ResNet-20's space with a latency table that is not in proportion to MACs (tiles of 8 channels), the
    unpruned network at 6.4 ms."""
    torch.manual_seed(0)
    space = PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28))
    space.attach_latency(TiledTable(space.latency_layers(), TorchTarget(batch=1)), 6.4)
    return space


def _proxy(ratios: dict[str, float]) -> float:
    """A made-up score with structure for the samplers to learn: the later groups are cheaper to prune."""
    return 1.0 - sum((i + 1) * r * r for i, r in enumerate(ratios.values())) / len(ratios) ** 2


def _search(space, name: str, budget: str, trials: int = TRIALS) -> list:
    """``trials`` trials of strategy ``name``, asked and costed as a search does (``begin_trial``); the
    candidates as the study records them."""
    context = SearchContext(space, parse_budget(budget), seed=0, tolerance=0.02, trials=trials)
    strategy = get_strategy(name, context)
    study = optuna.create_study(directions=list(strategy.directions), sampler=strategy.sampler())
    for _ in range(trials):
        pending = begin_trial(study, strategy, space, context.budget)
        ratios = pending.candidate.ratios
        study.tell(pending.trial, strategy.objectives(_proxy(ratios), pending.candidate.cost))
    return candidates(study, space.group_names)


def _use(space, candidate, budget: str) -> float:
    """The share of the budget's first constraint the candidate uses."""
    first = parse_budget(budget).primary
    return getattr(candidate.cost, first.metric) / first.limit(space.base_cost)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_every_sampled_trial_is_within_the_budget(timed_space, name, budget):
    found = _search(timed_space, name, budget)
    assert [c.state for c in found] == ["complete"] * TRIALS
    for c in found:  # and the ratios recorded are those costed
        assert timed_space.kept_channels(c.ratios_to_prune(timed_space.groups)) == c.widths


@pytest.mark.parametrize("budget", BUDGETS)
def test_tpe_fills_the_budget(timed_space, budget):
    # every trial at the boundary: within a grid step of one group (a tile of 8 channels, for latency)
    found = _search(timed_space, "tpe", budget, trials=12)
    constraints = parse_budget(budget).constraints
    for c in found:
        binding = max(getattr(c.cost, k.metric) / k.limit(timed_space.base_cost) for k in constraints)
        assert 0.97 <= binding <= 1.0, binding


def test_nsga2_spreads_its_costs_below_the_budget(timed_space):
    found = _search(timed_space, "nsga2", "50%flops", trials=30)
    uses = sorted(_use(timed_space, c, "50%flops") for c in found)
    assert uses[-1] <= 1.0 and uses[-1] > 0.95  # up to the budget
    assert uses[0] < 0.6  # and well below it: the front spans the costs
    assert len({round(u, 2) for u in uses}) > 10


def test_the_sampler_learns_from_the_directions_it_chose(space):
    # the study's parameters are the direction weights (and NSGA-II's share of the budget), the ratios a record
    context = SearchContext(space, parse_budget("50%flops"), seed=0, tolerance=0.02, warm_start=True)
    strategy = get_strategy("nsga2", context)
    study = optuna.create_study(directions=list(strategy.directions), sampler=strategy.sampler())
    first = begin_trial(study, strategy, space, context.budget)
    assert set(first.trial.params) == {DIRECTION + name for name in space.group_names} | {BUDGET_LEVEL}
    assert set(first.trial.params.values()) == {1.0}  # the warm start: every weight equal, the whole budget
    assert first.trial.user_attrs["ratios"] == first.candidate.ratios
    assert len(set(first.candidate.ratios.values())) == 1  # uniform
