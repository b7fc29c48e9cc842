"""Filter-importance criteria, one registry; each scores the channels of one dependency group.

A group couples every layer whose channels must be cut together (a residual stream, a
depthwise pair), so importance is computed over all of the group's weights at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp

from autoprune.errors import UserError

Criterion = Callable[[tp.dependency.group.Group], torch.Tensor]
_CRITERIA: dict[str, tuple[Callable[[int], Criterion], str]] = {}


def register_criterion(name: str, help: str):
    def wrap(factory: Callable[[int], Criterion]) -> Callable[[int], Criterion]:
        _CRITERIA[name] = (factory, help)
        return factory

    return wrap


def list_criteria() -> list[str]:
    return sorted(_CRITERIA)


def describe_criteria() -> dict[str, str]:
    return {name: _CRITERIA[name][1] for name in list_criteria()}


def get_criterion(name: str, seed: int = 0) -> Criterion:
    """A callable mapping a group to one importance score per channel (higher = keep)."""
    if name not in _CRITERIA:
        raise UserError(f"unknown criterion '{name}' (choose from {', '.join(list_criteria())})")
    return _CRITERIA[name][0](seed)


@register_criterion("l1", "sum of absolute weights over the group (Li et al. 2017)")
def _l1(seed: int) -> Criterion:
    return tp.importance.GroupMagnitudeImportance(p=1)


@register_criterion("l2", "L2 norm of the group's weights")
def _l2(seed: int) -> Criterion:
    return tp.importance.GroupMagnitudeImportance(p=2)


@register_criterion("fpgm", "distance from the geometric median of the layer's filters (He et al. 2019)")
def _fpgm(seed: int) -> Criterion:
    return tp.importance.FPGMImportance()


@register_criterion("random", "a seeded random ranking: the control every criterion must beat")
def _random(seed: int) -> Criterion:
    generator = torch.Generator().manual_seed(seed)

    def score(group: tp.dependency.group.Group) -> torch.Tensor:
        return torch.rand(len(group[0][1]), generator=generator)

    return score
