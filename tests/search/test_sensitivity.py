"""The per-group binary search finds planted dead channels; the allocation meets the budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.budget import parse_budget
from autoprune.data.bundle import make_bundle
from autoprune.measure import AdaptiveBNEvaluator
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace
from autoprune.search.allocation import along_safe_ratios
from autoprune.search.sensitivity import measure_sensitivity

pytestmark = pytest.mark.usefixtures("one_thread")


def _net_with_dead_half() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():  # channels 4..7 of the first conv output exactly zero after the ReLU
        net[0].weight[4:] = 0
        net[0].bias[4:] = 0
        net[1].weight[4:] = 0
        net[1].bias[4:] = 0
    return net


@pytest.fixture(scope="module")
def bundle():
    x = torch.rand(200, 1, 8, 8)
    y = torch.randint(0, 3, (200,))
    return make_bundle("tiny", x[:160], y[:160], x[160:], y[160:], holdout=40, seed=0)


def test_recon_damage_finds_the_dead_half(bundle):
    net = _net_with_dead_half()
    space = PruningSpace(net, bundle.example_input(), SpaceConfig(ratio_max=0.9))
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32)
    results = {r.group: r for r in measure_sensitivity(space, evaluator, tolerance=1e-6, damage="recon", quiet=True)}
    first = results["0"]
    # pruning the four dead channels costs nothing; a fifth channel does damage
    assert space.kept_channels({"0": first.max_safe_ratio})["0"] == 4
    assert all(d == pytest.approx(0.0, abs=1e-9) for r, d in first.curve if r <= first.max_safe_ratio)
    assert any(d > 1e-3 for r, d in first.curve if r > first.max_safe_ratio)
    # binary search: far fewer evaluations than grid points (19 on this grid): the top, then halving
    # 0..18 (0.45 safe, 0.65 not, 0.55 safe, 0.6 not)
    assert [ratio for ratio, _ in first.curve] == [0.45, 0.55, 0.6, 0.65, 0.9]
    assert 0 < first.macs_saved_at_max < 1


def test_proxy_damage_is_zero_for_no_pruning(bundle):
    space = PruningSpace(_net_with_dead_half(), bundle.example_input(), SpaceConfig(ratio_max=0.5))
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32)
    for r in measure_sensitivity(space, evaluator, tolerance=0.5, damage="proxy", quiet=True):
        assert r.max_safe_ratio == pytest.approx(0.5)  # a 50-point drop is allowed: everything is safe


def test_allocation_meets_the_budget_and_follows_the_safe_ratios(bundle):
    space = PruningSpace(_net_with_dead_half(), bundle.example_input(), SpaceConfig(ratio_max=0.9))
    budget = parse_budget("40%flops")
    ratios = along_safe_ratios(space, budget, {"0": 0.5, "3": 0.0})
    assert budget.feasible(space.cost(ratios), space.base_cost)
    assert ratios["0"] > ratios["3"]
