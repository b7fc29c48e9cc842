"""Fixtures of the search tests: one seeded ResNet-20 space on 28x28 one-channel inputs."""

from __future__ import annotations

import pytest
import torch

from autoprune.models import create_model
from autoprune.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    """ResNet-20 (10 classes) with seeded random weights, its space built on one 1x28x28 input."""
    torch.manual_seed(0)
    return PruningSpace(create_model("resnet20", in_channels=1, num_classes=10), torch.randn(1, 1, 28, 28))
