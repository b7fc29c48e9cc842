"""The zoo registry: ``@register_model(family=...)`` fills ``MODELS``; ``create_model`` reads it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autoprune.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model", alternatives="or give package.module:factory / file.py:factory")


def register_model(family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a zoo factory under its function name; ``family`` names its shipped search space
    (``search_spaces/<family>.yaml``)."""
    return MODELS.register(family=family)


def list_models() -> list[str]:
    """The zoo's model names, sorted."""
    return MODELS.names()
