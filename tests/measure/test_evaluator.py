"""Adaptive BN really re-estimates the statistics, from training batches only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.data.bundle import make_bundle
from autoprune.measure import AdaptiveBNEvaluator
from autoprune.models import create_model
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 12, 12)).astype(np.uint8)
    y = rng.integers(0, 3, 300)
    return make_bundle("tiny", x[:240], y[:240], x[240:], y[240:], holdout=40, seed=0)


def _bn1_inputs(model, evaluator):
    seen = []
    handle = model.bn1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    evaluator.recalibrate(model)
    handle.remove()
    return torch.cat(seen)


def test_recalibration_sets_running_stats_to_the_calibration_statistics(bundle):
    model = create_model("resnet20", in_channels=1, num_classes=3)
    model.bn1.running_mean.fill_(5.0)
    model.bn1.running_var.fill_(9.0)
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=3, batch_size=32, seed=0)
    inputs = _bn1_inputs(model, evaluator)
    assert inputs.shape[0] == 96  # 3 batches of 32, from the training split
    torch.testing.assert_close(model.bn1.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, inputs.var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-4)
    assert model.bn1.momentum == 0.1  # restored after the cumulative pass
    assert not model.training


def test_vanilla_scoring_leaves_statistics_alone(bundle):
    model = create_model("resnet20", in_channels=1, num_classes=3)
    before = model.bn1.running_mean.clone()
    score = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32, adaptive=False).score(model)
    assert 0.0 <= score <= 1.0
    torch.testing.assert_close(model.bn1.running_mean, before)


def test_pruned_candidate_statistics_change(bundle):
    model = create_model("resnet20", in_channels=1, num_classes=3)
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32)
    evaluator.recalibrate(model)
    space = PruningSpace(model, bundle.example_input())
    subnet, _ = space.prune(space.uniform_ratios(0.5))
    stale = subnet.layer2[0].bn1.running_mean.clone()
    evaluator.score(subnet)
    assert not torch.allclose(subnet.layer2[0].bn1.running_mean, stale)
    assert evaluator.images_per_score == 64 + 40
