"""Non-dominated sets: higher accuracy and lower cost are both better."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def non_dominated(items: Sequence[T], acc: Callable[[T], float], cost: Callable[[T], float]) -> list[T]:
    """Items no other item beats on both accuracy (higher) and cost (lower), cheapest first."""
    front = []
    for item in items:
        a, c = acc(item), cost(item)
        beaten = any(
            acc(o) >= a and cost(o) <= c and (acc(o) > a or cost(o) < c) for o in items
        )
        if not beaten:
            front.append(item)
    return sorted(front, key=cost)
