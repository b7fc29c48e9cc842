"""Adaptive BN really re-estimates the statistics, from training batches only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoprune.data.bundle import make_bundle
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.models import create_model
from autoprune.models.contract import RunContract, set_contract
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


# --- what the mutation run (make mutate) found untested ------------------------------------------------


@pytest.fixture(scope="module")
def rgb():
    """3 channels (channels_last and NCHW differ), 6 classes; 3000 training images, enough for the defaults."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (3320, 6, 6, 3)).astype(np.uint8)
    y = rng.integers(0, 6, 3320)
    return make_bundle("rgb", x[:3300], y[:3300], x[3300:], y[3300:], holdout=300, seed=0)


class ViewNet(torch.nn.Module):
    """Runs only on NCHW inputs (``view`` of the input), affine BNs with their own eps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 3)
        self.bn1 = torch.nn.BatchNorm2d(5, eps=0.5)
        self.conv2 = torch.nn.Conv2d(5, 4, 3)
        self.bn2 = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 2 * 2, 6)
        for bn in (self.bn1, self.bn2):
            torch.nn.init.normal_(bn.weight, 1.0, 0.5)
            torch.nn.init.normal_(bn.bias, 0.0, 1.0)

    def forward(self, x):
        x = x.view(x.shape[0], 3 * 6 * 6).view(x.shape[0], 3, 6, 6)  # fails on a channels_last input
        h = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv(x))))))
        return self.fc(h.flatten(1))


def test_recalibration_with_affine_bns_and_their_own_eps_matches_torch(rgb):
    model = set_contract(ViewNet(), RunContract("contiguous"))
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=3, batch_size=16)
    reference = copy.deepcopy(model)
    evaluator.recalibrate(model)
    _torch_recalibration(reference, evaluator)
    for bn, theirs in ((model.bn1, reference.bn1), (model.bn2, reference.bn2)):  # bn2 sees bn1's affine output
        torch.testing.assert_close(bn.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)


def test_recalibration_on_batches_of_two_is_unbiased(bundle):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 4), torch.nn.BatchNorm1d(4))
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=3, batch_size=2)
    reference = copy.deepcopy(model)
    evaluator.recalibrate(model)
    _torch_recalibration(reference, evaluator)
    torch.testing.assert_close(model[2].running_var, reference[2].running_var, rtol=1e-5, atol=1e-6)


def test_the_defaults_and_the_seeded_calibration_images(rgb):
    evaluator = AdaptiveBNEvaluator(rgb)
    assert (evaluator.calib_batches, evaluator.device, evaluator.adaptive, evaluator.last_seconds) == (
        20, "cpu", True, {})
    assert [len(y) for _, y in evaluator._calib] == [128] * 20
    assert [len(y) for _, y in evaluator._holdout] == [256, 44]
    assert evaluator.images_per_score == 2560 + 300
    # the calibration images are fixed by the seed: a seeded search repeats
    index = torch.randperm(3000, generator=torch.Generator().manual_seed(7919))[:2560]
    torch.testing.assert_close(torch.cat([x for x, _ in evaluator._calib]), rgb.train.x[index], rtol=0, atol=0)
    same = AdaptiveBNEvaluator(rgb, seed=0)
    torch.testing.assert_close(same.calibration_batch(), evaluator.calibration_batch(), rtol=0, atol=0)
    other = AdaptiveBNEvaluator(rgb, seed=1)
    assert not torch.equal(other.calibration_batch(), evaluator.calibration_batch())


def test_batches_live_on_the_evaluator_device_in_channels_last(rgb):
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8, device="meta")
    assert evaluator.device == "meta"
    for x, y in evaluator._calib + evaluator._holdout:
        assert x.device.type == y.device.type == "meta"
    cpu = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8)
    x = cpu.calibration_batch()
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_a_model_in_nchw_gets_the_batches_converted_once(rgb):
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=16)
    calib = evaluator._calib
    evaluator.score(create_model("resnet20", in_channels=3, num_classes=6))  # channels_last: nothing to convert
    assert evaluator._calib is calib
    model = set_contract(ViewNet(), RunContract("contiguous"))
    first = evaluator.score(model)
    calib, holdout = evaluator._calib, evaluator._holdout
    assert all(x.is_contiguous() for x, _ in calib + holdout)
    assert evaluator.score(model) == first
    assert evaluator._calib is calib and evaluator._holdout is holdout  # not converted again
    assert evaluator.holdout_accuracy(model) == first  # the statistics are those of the last score


def test_calibration_batch_is_the_first_calibration_batch_else_the_first_scoring_one(rgb):
    adaptive = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8)
    assert adaptive.calibration_batch() is adaptive._calib[0][0]
    vanilla = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8, adaptive=False)
    assert vanilla._calib == [] and vanilla.calibration_batch() is vanilla._holdout[0][0]


def test_score_on_the_first_calibration_batches_only(rgb, monkeypatch):
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=3, batch_size=16)
    model = set_contract(ViewNet(), RunContract("contiguous"))
    reference = copy.deepcopy(model)
    ticks = iter([1.0, 1.5, 1.75])
    monkeypatch.setattr("autoprune.measure.evaluator.time.perf_counter", lambda: next(ticks))
    evaluator.score(model, calib_batches=1)
    assert evaluator.last_seconds == {"recalibrate": 0.5, "evaluate": 0.25}
    evaluator._calib = evaluator._calib[:1]
    _torch_recalibration(reference, evaluator)
    torch.testing.assert_close(model.bn1.running_mean, reference.bn1.running_mean, rtol=1e-5, atol=1e-6)


class Oracle(torch.nn.Module):
    """Predicts class 1 wherever the first pixel is positive, else class 0."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([-first, first, torch.zeros_like(first).expand(-1, 4)], dim=1)


def test_accuracy_and_holdout_accuracy_are_exact(rgb):
    expected = int(((rgb.test.x.flatten(1)[:, 0] > 0).long() == rgb.test.y).sum()) / 20
    assert accuracy(Oracle(), rgb.test) == expected
    assert accuracy(Oracle(), rgb.test, batch_size=7) == expected
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=1, batch_size=8, adaptive=False)
    held = int(((rgb.holdout.x.flatten(1)[:, 0] > 0).long() == rgb.holdout.y).sum()) / 300
    assert evaluator.holdout_accuracy(Oracle()) == held == evaluator.score(Oracle())
    assert 0.1 < held < 0.3  # chance on 6 classes, not a degenerate 0 or 1


def test_holdout_accuracy_does_not_recalibrate(rgb):
    model = set_contract(ViewNet(), RunContract("contiguous"))
    before = copy.deepcopy(model.state_dict())
    AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8).holdout_accuracy(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_every_entry_point_moves_the_model_to_the_device(rgb, monkeypatch):
    from autoprune.measure import evaluator as module

    devices, inputs = [], []
    real, real_input = module.model_to, module.input_to
    monkeypatch.setattr(module, "model_to", lambda model, device: (devices.append(device), real(model, device))[1])
    monkeypatch.setattr(module, "input_to", lambda x, layout, device=None: (inputs.append((layout, device)),
                                                                            real_input(x, layout, device))[1])
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=1, batch_size=8)
    model = set_contract(ViewNet(), RunContract("contiguous"))
    evaluator.score(model)
    evaluator.holdout_accuracy(model)
    evaluator.forward_seconds(model)
    inputs.clear()
    accuracy(model, rgb.test)
    accuracy(model, rgb.test, device="cpu")
    assert devices == ["cpu"] * 5
    assert inputs == [("contiguous", "cpu")] * 2  # one batch of the 20 test images each time


def test_forward_seconds_times_one_pass_over_every_batch(rgb, monkeypatch):
    evaluator = AdaptiveBNEvaluator(rgb, calib_batches=2, batch_size=8)
    model = set_contract(ViewNet(), RunContract("contiguous"))
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    ticks = iter([2.0, 2.625])
    monkeypatch.setattr("autoprune.measure.evaluator.time.perf_counter", lambda: next(ticks))
    assert evaluator.forward_seconds(model) == 0.625
    assert calls == [8, 8, 256, 44] and not model.training


def test_a_stopped_score_is_the_accuracy_of_the_batches_it_saw(bundle):
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=3)
    evaluator = AdaptiveBNEvaluator(bundle, calib_batches=2, batch_size=32, eval_batch_size=16, seed=0)
    assert evaluator.scoring_batches == 3  # 40 held-out images: 16, 16 and 8
    full = evaluator.score(copy.deepcopy(model))
    assert (evaluator.last_images, evaluator.last_stopped) == (40, False)
    seen = []

    def stop_after_second(step, images, batch_accuracy, running_accuracy):
        seen.append((step, images, batch_accuracy, running_accuracy))
        return step == 1

    stopped = evaluator.score(copy.deepcopy(model), stop=stop_after_second)
    assert (evaluator.last_images, evaluator.last_stopped) == (32, True)
    # the running accuracy of the first two batches, which each batch's own accuracy adds up to
    assert [(s, images) for s, images, _, _ in seen] == [(0, 16), (1, 32)]
    assert stopped == seen[-1][3] == pytest.approx((seen[0][2] + seen[1][2]) / 2)
    # a rule that never stops is asked after every batch but the last, and changes nothing
    seen.clear()
    assert evaluator.score(copy.deepcopy(model), stop=lambda *a: seen.append(a) and False) == full
    assert len(seen) == 2 and (evaluator.last_images, evaluator.last_stopped) == (40, False)
