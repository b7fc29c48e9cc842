"""Search strategies on one ask/tell interface, listed in one registry."""

from autoprune.search import _binary, _nsga2, _pfp, _random, _tpe  # noqa: F401  (fill the registry)
from autoprune.search.base import (
    SearchContext,
    Strategy,
    describe_strategies,
    get_strategy,
    list_strategies,
    register_strategy,
)

__all__ = [
    "SearchContext",
    "Strategy",
    "describe_strategies",
    "get_strategy", "list_strategies", "register_strategy"]
