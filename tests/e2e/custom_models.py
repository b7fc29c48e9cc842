"""Custom models for the end-to-end tests, as a user's file would define them."""

from __future__ import annotations

import time

import torch
from torch import nn


def _features(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Picky(nn.Module):
    """A small CNN whose forward refuses some widths of its convs, as custom models can."""

    def __init__(self, refuse) -> None:
        super().__init__()
        self.refuse = refuse
        self.features = _features(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = (self.features[0].out_channels, self.features[3].out_channels)
        if self.refuse(*widths):
            raise ValueError(f"this model cannot run with {widths} channels")
        return self.fc(self.features(x))


def odd_first(first: int, second: int) -> bool:
    return first % 2 == 1


def pruned(first: int, second: int) -> bool:
    return (first, second) != (8, 16)


class SlowWhenPruned(nn.Module):
    """Pruned copies take a second to score, so that a test can kill a worker mid-trial."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.features[0].out_channels, self.features[3].out_channels) != (8, 16):
            time.sleep(0.4)
        return self.fc(self.features(x))


def slow(in_channels: int, num_classes: int) -> nn.Module:
    return SlowWhenPruned(in_channels, num_classes)
