"""The zoo registry: ``@register_model(family=...)`` fills it, ``get_model_entry`` reads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from autoprune.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    factory: Callable[..., nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def register_model(family: str):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = ModelEntry(fn.__name__, family, fn)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise UserError(
            f"unknown model '{name}' (choose from {', '.join(list_models())}, "
            "or give package.module:factory / file.py:factory)"
        )
    return _MODELS[name]
