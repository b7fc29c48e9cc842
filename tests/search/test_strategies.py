"""Strategies on a real ResNet-20 space: budget-band sampling, warm start, fine-tune choice."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from autoprune.budget import parse_budget
from autoprune.candidate import candidates
from autoprune.errors import UserError
from autoprune.models import create_model
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace
from autoprune.runners.trial import begin_trial, close_left_behind, finished_count
from autoprune.search import SearchContext, describe_strategies, get_strategy, list_strategies
from autoprune.search.allocation import (
    along_safe_ratios,
    draw_in_budget,
    ratio_grid,
    uniform_at_budget,
)
from autoprune.selection import choose_for_finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def _context(space, budget="50%flops", **kw):
    return SearchContext(space, parse_budget(budget), seed=0, tolerance=0.02, **kw)


def test_registry_lists_every_strategy():
    assert list_strategies() == ["binary", "nsga2", "pfp", "random", "tpe"]
    assert list(describe_strategies()) == list_strategies()
    assert describe_strategies()["tpe"] == "Optuna TPE (multivariate) over directions between the groups, each scaled onto the budget"


def test_a_strategy_is_built_by_name_and_knows_its_name(space):
    strategy = get_strategy("random", _context(space))
    assert type(strategy).__name__ == "RandomStrategy" and strategy.name == "random"


def test_unknown_strategy_lists_the_strategies(space):
    with pytest.raises(UserError) as err:
        get_strategy("grid", _context(space))
    assert str(err.value) == "unknown strategy 'grid' (choose from binary, nsga2, pfp, random, tpe)"


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2"])
def test_warm_start_comes_first_then_never_again(space, name):
    strategy = get_strategy(name, _context(space, warm_start=True))
    study = optuna.create_study(directions=list(strategy.directions), sampler=strategy.sampler())
    first, ratios = strategy.ask(study)
    assert ratios == uniform_at_budget(space, parse_budget("50%flops")) and first.user_attrs.get("warm_start")
    study.tell(first, strategy.objectives(0.5, space.cost(ratios)))
    second, ratios2 = strategy.ask(study)
    assert not second.user_attrs.get("warm_start")
    assert ratios2 != ratios


def test_random_proposes_eagleeye_draws_seeded_by_the_trial_number(space):
    ctx = _context(space)
    strategy = get_strategy("random", ctx)
    study = optuna.create_study(sampler=strategy.sampler())
    for number in range(2):
        trial, ratios = strategy.ask(study)
        expected, draws, use = draw_in_budget(space, ctx.budget, 0.02, np.random.default_rng([0, number]))
        assert ratios == expected and trial.user_attrs == {"draws": draws, "budget_use": round(use, 4)}
        study.tell(trial, 0.5)


def test_binary_proposes_its_allocation_then_its_neighbours(space):
    safe = {name: 0.05 * (i % 5) for i, name in enumerate(space.group_names)}
    ctx = _context(space, "40%flops", safe_ratios=safe)
    strategy = get_strategy("binary", ctx)
    study = optuna.create_study(sampler=strategy.sampler())
    trial, ratios = strategy.ask(study)
    assert trial.user_attrs == {"allocation": True} and ratios == along_safe_ratios(space, ctx.budget, safe)
    study.tell(trial, 0.5)
    trial, neighbour = strategy.ask(study)
    rng = np.random.default_rng([0, 1])
    factors = {name: float(rng.uniform(0.5, 1.5)) for name in safe}
    assert trial.user_attrs == {"allocation": False}
    assert neighbour == along_safe_ratios(space, ctx.budget, safe, factors) != ratios


def test_sampled_ratios_stay_on_each_groups_grid():
    torch.manual_seed(0)
    config = SpaceConfig(ratio_min=0.1, ratio_max=0.83, step=0.07, overrides=[{"match": "layer3.*", "max": 0.3},
                                                                              {"match": "conv1", "min": 0.3, "max": 0.33}])
    odd = PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28), config)
    context = _context(odd, "25%flops")
    strategy = get_strategy("tpe", context)
    study = optuna.create_study(sampler=strategy.sampler())
    seen = set()
    for _ in range(12):
        pending = begin_trial(study, strategy, odd, context.budget)
        ratios = pending.candidate.ratios
        for g in odd.groups:
            assert ratios[g.name] in ratio_grid(g.low, g.high, 0.07), (g.name, ratios[g.name])
        assert ratios["conv1"] == 0.3 and "direction:conv1" not in pending.trial.params  # one grid point: not sampled
        seen |= set(ratios.values())
        study.tell(pending.trial, float(np.mean(list(ratios.values()))))
        # read back from the study, the candidate is fine-tuned at the ratios it was asked at, conv1's too
        assert candidates(study, odd.group_names)[-1].ratios_to_prune(odd.groups) == pytest.approx(ratios, abs=1e-9)
    assert 0.8 in seen and 0.24 in seen and 0.83 not in seen  # the grid's top, not the bound


def _scored_study(points):
    """A two-objective study holding (proxy, macs) points as feasible scored trials."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (proxy, macs) in enumerate(points):
        trial = study.ask()
        trial.suggest_float("g", 0.0, 1.0)
        for key, value in (("feasible", True), ("proxy_acc", proxy), ("macs", macs)):
            trial.set_user_attr(key, value)
        study.tell(trial, [proxy, macs])
    return study


def test_spread_choice_covers_the_front():
    # front (proxy up, macs down): (0.9, 100), (0.8, 60), (0.7, 40), (0.6, 20); dominated: (0.5, 90)
    study = _scored_study([(0.9, 100), (0.8, 60), (0.5, 90), (0.7, 40), (0.6, 20)])
    def macs(c):
        return c.cost.macs

    spread = choose_for_finetune(candidates(study), 3, macs, spread=True)
    assert [c.cost.macs for c in spread] == [100, 20, 60]
    top = choose_for_finetune(candidates(study), 3, macs, spread=False)
    assert [c.proxy_acc for c in top] == [0.9, 0.8, 0.7]


# --- PFP's allocation ----------------------------------------------------------------------------


def test_pfp_keeps_the_expected_distinct_channels_of_its_draws():
    from autoprune.search._pfp import DELTA, SAMPLE_CONSTANT, pfp_kept

    sensitivity = [0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.01, 0.01, 0.0, 0.0]
    eps, groups = 8.0, 5
    total = sum(sensitivity)
    draws = int(np.ceil(SAMPLE_CONSTANT * (6 + 2 * eps) * total * np.log(8 * groups / DELTA) / eps**2))
    rng = np.random.default_rng(0)
    p = np.array(sensitivity) / total
    simulated = np.mean([len(set(rng.choice(len(p), size=draws, p=p))) for _ in range(4000)])
    assert pfp_kept(sensitivity, eps, groups) == int(np.ceil(simulated - 0.05))
    # a smaller error bound needs more draws, never fewer channels; channels of zero sensitivity are never drawn
    kept = [pfp_kept(sensitivity, e, groups) for e in (100.0, 10.0, 1.0, 0.1, 0.01)]
    assert kept == sorted(kept) and kept[0] < kept[-1] == 8
    assert pfp_kept([3.0, 0.0, 0.0, 0.0], 0.01, groups) == 1
    assert pfp_kept([0.0, 0.0], 1.0, groups) == 2  # nothing measured: nothing to prune by


@pytest.fixture(scope="module")
def pfp_space():
    torch.manual_seed(0)
    batches = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))]
    return PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28),
                        criterion="pfp", batches=batches)


def test_pfp_allocation_is_the_smallest_error_bound_within_budget(pfp_space):
    from autoprune.search._pfp import pfp_ratios

    ctx = _context(pfp_space)
    study = optuna.create_study(sampler=get_strategy("pfp", ctx).sampler())
    strategy = get_strategy("pfp", ctx)
    trial, ratios = strategy.ask(study)
    eps = trial.user_attrs["pfp_eps"]
    assert trial.user_attrs["allocation"] is True
    assert ctx.budget.feasible(pfp_space.cost(ratios), pfp_space.base_cost)
    tighter = pfp_ratios(ctx, dict.fromkeys(pfp_space.group_names, eps * 0.999))
    assert not ctx.budget.feasible(pfp_space.cost(tighter), pfp_space.base_cost)
    assert len(set(ratios.values())) > 1  # groups keep what their own sensitivities need, not one ratio
    study.tell(trial, 0.5)
    trial, neighbour = strategy.ask(study)
    assert trial.user_attrs["allocation"] is False and neighbour != ratios
    assert ctx.budget.feasible(pfp_space.cost(neighbour), pfp_space.base_cost)


def test_pfp_bisects_its_error_bound_sixty_times(pfp_space, monkeypatch):
    from autoprune.search._pfp import allocate_at_budget

    calls = []
    cost = pfp_space.cost
    monkeypatch.setattr(pfp_space, "cost", lambda ratios: calls.append(ratios) or cost(ratios))
    ratios, eps = allocate_at_budget(_context(pfp_space), dict.fromkeys(pfp_space.group_names, 1.0))
    assert len(calls) == 1 + 60  # the largest bound, then the bisection on log eps
    assert ratios in calls and 1e-4 < eps < 1e6


def test_pfp_at_a_given_error_bound(pfp_space):
    from autoprune.search._pfp import pfp_ratios

    ctx = _context(pfp_space, pfp_eps=2.0)
    strategy = get_strategy("pfp", ctx)
    study = optuna.create_study(sampler=strategy.sampler())
    _, ratios = strategy.ask(study)
    assert ratios == pfp_ratios(ctx, dict.fromkeys(pfp_space.group_names, 2.0))
    larger = pfp_ratios(ctx, dict.fromkeys(pfp_space.group_names, 20.0))
    assert pfp_space.cost(larger).macs < pfp_space.cost(ratios).macs


def test_a_resumed_study_closes_what_a_killed_run_left_open(space, tmp_path):
    # a run killed while scoring one trial and between the enqueue and the ask of the next
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    get_strategy("random", _context(space)).ask(study)  # the trial being scored
    study.enqueue_trial({g: 0.1 for g in space.group_names})  # the candidate not yet asked
    study = optuna.load_study(storage=storage, study_name="s")  # the resumed run
    close_left_behind(study)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert finished_count(study) == 0  # neither counts toward --trials
    trial, _ = get_strategy("random", _context(space)).ask(study)
    assert trial.number == 2 and "budget_use" in trial.user_attrs  # the next ask gets its own candidate
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))
