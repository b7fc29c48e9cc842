"""The in-memory data set every other part of autoprune consumes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Split:
    """Normalised images (N, C, H, W float32; volumes N, C, D, H, W) and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        """The samples at ``index`` (integer positions, shape ``(K,)``) as a new ``Split``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.x[index], self.y[index])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` in order, ``batch_size`` samples at a time (the last may be fewer): ``x`` ``(B, C, H, W)``
        (``(B, C, D, H, W)`` for volumes), ``y`` ``(B,)``; views of the split, not copies."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


@dataclass
class DataBundle:
    """A data set split three ways.

    ``train`` is for training, fine-tuning and BN recalibration; ``holdout`` is a fixed,
    seeded part of the original training set used to score candidates; ``test`` is used only
    for final numbers of fine-tuned subnets.
    """

    name: str
    train: Split
    holdout: Split
    test: Split
    num_classes: int
    augment: tuple[str, ...] = field(default_factory=tuple)

    @property
    def in_channels(self) -> int:
        """C, the images' channel count (dimension 1 of ``train.x``)."""
        return int(self.train.x.shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape without the batch: ``(C, H, W)``, or ``(C, D, H, W)`` for volumes."""
        return tuple(int(s) for s in self.train.x.shape[1:])  # type: ignore[return-value]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A copy of the first ``batch`` normalised training images, ``(batch, C, H, W)``."""
        return self.train.x[:batch].clone()

    def summary(self) -> dict:
        """Name, the sizes of the three splits (samples), input shape, class count and augmentations, as a
        JSON-ready dict."""
        return {
            "name": self.name,
            "train": len(self.train),
            "holdout": len(self.holdout),
            "test": len(self.test),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "augment": list(self.augment),
        }


def make_bundle(
    name: str,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray | torch.Tensor,
    *,
    holdout: int,
    seed: int,
    augment: tuple[str, ...] = (),
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataBundle:
    """Normalise raw arrays with training-set statistics and carve out the scoring holdout.

    Images may be (N, H, W), (N, H, W, C) or (N, C, H, W), integer 0..255 or float; arrays of 5 or more
    dimensions are taken as (N, C, D, H, W...) volumes as they are. ``limit_train`` keeps the first N
    training images left after the holdout; ``limit_test`` the first N test images.

    Returns float32 images in (N, C, H, W) (or volumes), each channel at mean 0 and standard deviation 1
    over all the training images (the holdout's included), labels (N,) int64, and ``num_classes`` = the
    largest label + 1.
    Raises ``ValueError`` where images and labels differ in count, train and test images differ in shape, or
    ``holdout`` leaves no training image.
    """
    xtr, xte = _to_nchw(x_train), _to_nchw(x_test)
    ytr, yte = _labels(y_train), _labels(y_test)
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise ValueError(f"data '{name}': images and labels differ in count")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"data '{name}': train and test images differ in shape")
    if holdout >= xtr.shape[0]:
        raise ValueError(
            f"data '{name}': holdout of {holdout} leaves no training images (train has {xtr.shape[0]})"
        )
    per_channel = tuple(d for d in range(xtr.ndim) if d != 1)
    mean = xtr.mean(dim=per_channel, keepdim=True)
    std = xtr.std(dim=per_channel, keepdim=True).clamp_min(1e-6)
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std
    order = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(seed))
    hold_idx, train_idx = order[:holdout], order[holdout:]
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    if limit_test is not None:
        xte, yte = xte[:limit_test], yte[:limit_test]
    num_classes = int(max(ytr.max().item(), yte.max().item()) + 1)
    return DataBundle(
        name=name,
        train=Split(xtr[train_idx].contiguous(), ytr[train_idx].contiguous()),
        holdout=Split(xtr[hold_idx].contiguous(), ytr[hold_idx].contiguous()),
        test=Split(xte.contiguous(), yte.contiguous()),
        num_classes=num_classes,
        augment=augment,
    )


def _labels(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y))
    return t.long().reshape(-1)


def _to_nchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.array(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    is_int = not torch.is_floating_point(t)
    t = t.float()
    if is_int:
        t = t / 255.0
    if t.ndim == 3:
        return t.unsqueeze(1)
    if t.ndim >= 5:  # volumes (N, C, D, H, W): channels first, as Conv3d takes them
        return t.contiguous()
    if t.ndim != 4:
        raise ValueError(f"images must have at least 3 dimensions (N, H, W), got shape {tuple(t.shape)}")
    if t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def augment_batch(x: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, per sample, vectorised: ``x`` (N, C, H, W)
    -> (N, C, H, W). ``augment`` names those to apply (``crop``, ``flip``); ``generator``, on the CPU, draws
    the offsets and flips."""
    n, _, h, w = x.shape
    if "crop" in augment:
        pad = 4
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (torch.arange(h)[None, :] + dy[:, None]).to(x.device)
        cols = (torch.arange(w)[None, :] + dx[:, None]).to(x.device)
        batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
    if "flip" in augment:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
