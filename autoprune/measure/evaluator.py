"""EagleEye adaptive-BN scoring of a pruned candidate, and plain top-1 accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from autoprune.data import DataBundle, Split
from autoprune.models.contract import CHANNELS_LAST, contract_of, input_to, logits_of, model_to

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _calibrating_forward(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """What a BN layer computes in train mode, adding its batch statistics to the running sums.

    The sums divided by the number of batches are the cumulative average that ``momentum=None``
    keeps. The moments come from two plain reductions because PyTorch's own train-mode statistics
    are slow on the odd channel counts that pruning leaves in channels_last tensors (5 ms against
    0.5 ms for an eval-mode BN at 11 channels, 28x28, batch 128, 2 CPU threads). On ResNet-20
    candidates this cut recalibration from 2.4 s to 1.9 s with the same statistics.
    """
    per_sample = tuple(range(2, x.dim()))
    total, squares = (x.sum(per_sample).sum(0), (x * x).sum(per_sample).sum(0)) if per_sample else (x.sum(0), (x * x).sum(0))
    n = x.numel() // x.shape[1]
    mean = total / n
    var = (squares / n - mean * mean).clamp_(min=0.0)
    bn.running_mean.add_(mean)
    bn.running_var.add_(var * (n / max(n - 1, 1)))  # unbiased, as train mode records it
    bn.num_batches_tracked.add_(1)
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


def to_device(model: nn.Module, device: str) -> nn.Module:
    """Move a model to ``device`` in its layout (``autoprune.models.contract``): channels_last, the faster
    layout for convolutions here, unless the model's set-up check found that it does not run in it."""
    return model_to(model, device)


def _batches_on(split: Split, batch_size: int, device: str,
                layout: str = CHANNELS_LAST) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(input_to(x, layout, device), y.to(device)) for x, y in split.batches(batch_size)]


def _in_layout(batches: list[tuple[torch.Tensor, torch.Tensor]], layout: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(input_to(x, layout), y) for x, y in batches]


# ``stop(step, images, batch_accuracy, running_accuracy)`` after each scoring batch (step 0, 1, ...; ``images`` seen so
# far): True stops scoring
StopRule = Callable[[int, int, float, float], bool]


@torch.no_grad()
def _top1(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
          stop: StopRule | None = None) -> tuple[float, int]:
    """Top-1 over ``batches`` in order, and the images it saw: all of them, or those up to the batch after
    which ``stop`` said to stop."""
    model.eval()
    key = contract_of(model).output_key
    correct = total = 0
    for step, (x, y) in enumerate(batches):
        right = int((logits_of(model(x), key).argmax(1) == y).sum())
        correct, total = correct + right, total + int(y.numel())
        if stop is not None and step < len(batches) - 1 and stop(step, total, right / max(int(y.numel()), 1),
                                                                 correct / total):
            break
    return correct / max(total, 1), total


def accuracy(model: nn.Module, split: Split, *, device: str = "cpu", batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (a fraction in [0, 1])."""
    model = to_device(model, device)
    return _top1(model, _batches_on(split, batch_size, device, contract_of(model).layout))[0]


class AdaptiveBNEvaluator:
    """Score a pruned network by its accuracy after BN statistics are re-estimated.

    Pruning leaves BatchNorm running statistics describing the unpruned network, which makes a
    vanilla evaluation of a candidate close to chance and uninformative (EagleEye, Li et al. 2020).
    We re-estimate them as a cumulative average (what ``momentum=None`` keeps) over ``calib_batches``
    fixed training batches, each BN normalising by its batch statistics as in train mode, without
    gradients; then score top-1 on the held-out part of the training set. The test split is never touched here.
    """

    def __init__(
        self,
        data: DataBundle,
        *,
        calib_batches: int = 20,
        batch_size: int = 128,
        device: str = "cpu",
        seed: int = 0,
        adaptive: bool = True,
        eval_batch_size: int = 256,
    ) -> None:
        self.adaptive = adaptive
        self.device = device
        self.calib_batches = calib_batches
        n_calib = min(calib_batches * batch_size, len(data.train))
        generator = torch.Generator().manual_seed(seed + 7919)
        calib_idx = torch.randperm(len(data.train), generator=generator)[:n_calib]
        self._calib = _batches_on(data.train.subset(calib_idx), batch_size, device) if adaptive else []
        self._holdout = _batches_on(data.holdout, eval_batch_size, device)
        self._layout = CHANNELS_LAST  # of the batches; a model in another layout gets them converted once
        self.last_seconds: dict[str, float] = {}
        self.last_images = 0  # scoring images the last score saw
        self.last_stopped = False  # whether the last score was stopped early

    def _batches_for(self, model: nn.Module) -> tuple[list, list]:
        """The calibration and scoring batches in ``model``'s layout, converted on the first model that
        needs another (every candidate of a search has the same layout: this happens once)."""
        layout = contract_of(model).layout
        if layout != self._layout:
            self._calib, self._holdout = _in_layout(self._calib, layout), _in_layout(self._holdout, layout)
            self._layout = layout
        return self._calib, self._holdout

    @property
    def images_per_score(self) -> int:
        """Images pushed through the network for one score (recalibration + evaluation)."""
        return sum(len(y) for _, y in self._calib) + sum(len(y) for _, y in self._holdout)

    def calibration_batch(self) -> torch.Tensor:
        """One fixed batch of inputs (training images), for measurements that need a single batch."""
        return (self._calib or self._holdout)[0][0]

    @torch.no_grad()
    def recalibrate(self, model: nn.Module, batches: int | None = None) -> None:
        """Re-estimate BN statistics on the first ``batches`` calibration batches (default: all);
        without calibration batches (a vanilla scorer) the statistics are left as they are."""
        bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
        calib, _ = self._batches_for(model)
        if not bns or not calib[:batches]:
            return
        model.eval()  # dropout and friends stay deterministic; the BN layers normalise by batch statistics below
        for bn in bns:
            bn.running_mean.zero_()
            bn.running_var.zero_()
            bn.num_batches_tracked.zero_()
            bn.forward = partial(_calibrating_forward, bn)  # an instance attribute, shadowing the class's
        try:
            for x, _ in calib[:batches]:
                model(x)
        finally:
            for bn in bns:
                del bn.forward
        for bn in bns:
            count = max(int(bn.num_batches_tracked), 1)
            bn.running_mean.div_(count)
            bn.running_var.div_(count)

    def score(self, model: nn.Module, calib_batches: int | None = None, stop: StopRule | None = None) -> float:
        """Proxy accuracy of ``model`` (modified in place: its BN statistics are re-estimated,
        on the first ``calib_batches`` calibration batches where given), a fraction.

        Early-stopped scoring: ``stop(step, images, batch_accuracy, running_accuracy)`` is called after each scoring
        batch but the last (``scoring_batches`` in all, always in the same order), and True stops there; the
        score is then the accuracy on the images seen so far. ``last_seconds`` keeps the time split of this
        call (the hot path, measured every time), ``last_images`` the scoring images it saw and ``last_stopped``
        whether ``stop`` stopped it.
        """
        tic = time.perf_counter()
        model = to_device(model, self.device)
        if self.adaptive:
            self.recalibrate(model, calib_batches)
        recalibrated = time.perf_counter()
        holdout = self._batches_for(model)[1]
        proxy, self.last_images = _top1(model, holdout, stop)
        self.last_stopped = self.last_images < sum(len(y) for _, y in holdout)
        self.last_seconds = {"recalibrate": recalibrated - tic, "evaluate": time.perf_counter() - recalibrated}
        return proxy

    @property
    def scoring_batches(self) -> int:
        """The batches of a full score, each one step of an early-stopped one (``score``'s ``stop``)."""
        return len(self._holdout)

    def holdout_accuracy(self, model: nn.Module) -> float:
        """Top-1 on the scoring images, BN statistics as they are (no recalibration)."""
        model = to_device(model, self.device)
        return _top1(model, self._batches_for(model)[1])[0]

    @torch.no_grad()
    def forward_seconds(self, model: nn.Module) -> float:
        """Seconds of the bare forward passes one score needs (every calibration batch and every
        scoring image once, eval mode): the floor that the scoring overhead is measured against."""
        model = to_device(model, self.device).eval()
        calib, holdout = self._batches_for(model)
        tic = time.perf_counter()
        for x, _ in calib + holdout:
            model(x)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - tic
