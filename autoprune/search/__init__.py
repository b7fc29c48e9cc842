"""Search strategies on one ask/tell interface, listed in one registry; the budget allocations in ``allocation``."""

from autoprune.search import _binary, _nsga2, _pfp, _random, _tpe  # noqa: F401  (fill the registry)
from autoprune.search.base import (
    STRATEGIES,
    SearchContext,
    Strategy,
    describe_strategies,
    get_strategy,
    list_strategies,
    register_strategy,
)

__all__ = [
    "STRATEGIES",
    "SearchContext",
    "Strategy",
    "describe_strategies",
    "get_strategy", "list_strategies", "register_strategy"]
