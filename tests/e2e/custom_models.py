"""Custom models for the end-to-end tests, as a user's file would define them."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

USER_MODELS = Path(__file__).parents[1] / "models" / "user_models"


def user_model(name: str) -> ModuleType:
    """One of tests/models/user_models/ (the kinds of models users bring), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"user_models_{name}", USER_MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _features(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Picky(nn.Module):
    """A small CNN whose forward refuses some widths of its convs, as custom models can, on batches of
    data: more than 2 images. On one or two images (autoprune's set-up runs pruned copies so, to probe
    its groups) it runs at every width, so that its candidates fail in the search itself."""

    def __init__(self, refuse) -> None:
        super().__init__()
        self.refuse = refuse
        self.features = _features(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = (self.features[0].out_channels, self.features[3].out_channels)
        if len(x) > 2 and self.refuse(*widths):
            raise ValueError(f"this model cannot run with {widths} channels")
        return self.fc(self.features(x))


def odd_first(first: int, second: int) -> bool:
    return first % 2 == 1


def pruned(first: int, second: int) -> bool:
    return (first, second) != (8, 16)


def only_unpruned(in_channels: int, num_classes: int) -> nn.Module:
    """For the CLI: a model that runs at its full widths only, so every candidate fails."""
    return Picky(pruned)


MARKS = "AUTOPRUNE_TEST_MARKS"  # a folder: a pruned copy's forward leaves its process id there


class SlowWhenPruned(nn.Module):
    """Pruned copies take seconds to score: each forward pass of a batch of more than one image takes 0.4 s more
    and leaves a file named by its process id in the folder ``$AUTOPRUNE_TEST_MARKS`` where that is set; a test
    kills a worker as soon as it is seen scoring, which is mid-trial on any machine. Single images (the latency
    set-up's batch 1) run at the model's own speed, so that the set-up takes a second, not minutes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.features = _features(in_channels)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 1 and (self.features[0].out_channels, self.features[3].out_channels) != (8, 16):
            if os.environ.get(MARKS):
                Path(os.environ[MARKS], str(os.getpid())).touch()
            time.sleep(0.4)
        return self.fc(self.features(x))


def slow(in_channels: int, num_classes: int) -> nn.Module:
    return SlowWhenPruned(in_channels, num_classes)
