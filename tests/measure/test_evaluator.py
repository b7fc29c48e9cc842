"""Adaptive BN really re-estimates the statistics, from training batches only."""

from __future__ import annotations

import copy

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
    model.bn1.running_var.fill_(4.0)
    before = model.bn1.running_mean.clone()
    vanilla = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32, adaptive=False)
    score = vanilla.score(model)
    assert 0.0 <= score <= 1.0
    vanilla.recalibrate(model)  # as fine-tuning does first: nothing to calibrate on, nothing changes
    torch.testing.assert_close(model.bn1.running_mean, before)
    assert torch.all(model.bn1.running_var == 4.0)


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


def _torch_recalibration(model, evaluator):
    """The reference: PyTorch's own train-mode BN with a cumulative average."""
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    model.eval()
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x, _ in evaluator._calib:
            model(x)
    model.eval()


@pytest.mark.parametrize("kind", ["pruned resnet", "mlp with BatchNorm1d"])
def test_recalibration_matches_torch_train_mode(bundle, kind):
    if kind == "pruned resnet":
        base = create_model("resnet20", in_channels=1, num_classes=3)
        space = PruningSpace(base, bundle.example_input())
        model, _ = space.prune(space.uniform_ratios(0.37))  # odd channel counts
    else:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 24), torch.nn.BatchNorm1d(24),
                                    torch.nn.ReLU(), torch.nn.Linear(24, 3))
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=3, batch_size=32, seed=1)
    reference = copy.deepcopy(model)
    evaluator.recalibrate(model)
    _torch_recalibration(reference, evaluator)
    ours, theirs = model.state_dict(), reference.state_dict()
    stats = [k for k in ours if "running" in k or "num_batches" in k]
    assert stats
    for key in stats:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)
    x = evaluator.calibration_batch()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert "forward" not in vars(model.bn1 if kind == "pruned resnet" else model[2])  # the class's forward again
