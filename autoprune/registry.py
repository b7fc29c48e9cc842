"""One registry for everything chosen by name: models, data sources, criteria and strategies.

A ``Registry`` maps names to objects (a factory, a loader, a class) registered by decorator, each
with a one-line help text and any extra attributes the kind needs (a criterion's ``needs_data``, a
data source's ``needs_arg`` and ``augment``, a model's ``family``). The command line takes its
choices and their help from ``names()`` and ``describe()``; an unknown name is a ``UserError``
that lists the choices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from autoprune.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object: ``name``, the object itself (``obj``), its ``help`` and its ``extra``
    attributes, which also read as attributes of the entry (``entry.needs_data``)."""

    name: str
    obj: T
    help: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        extra = self.__dict__.get("extra", {})  # through __dict__: no recursion while half-built (copy, pickle)
        if key in extra:
            return extra[key]
        raise AttributeError(f"{self.__dict__.get('name', '?')!r} has no attribute {key!r}")


class Registry(Generic[T]):
    """Named objects of one ``kind`` ("model", "data", "criterion", "strategy").

    ``alternatives`` ends the list of choices in the unknown-name error where a kind also takes
    something unregistered, as models and data take ``package.module:factory``. Registering a name
    again replaces the earlier entry.
    """

    def __init__(self, kind: str, *, alternatives: str | None = None) -> None:
        self.kind = kind
        self.alternatives = alternatives
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, help: str = "", **extra: Any) -> Callable[[T], T]:
        """A decorator that registers its target under ``name`` (default: the target's ``__name__``)
        with ``help`` and the ``extra`` attributes (see ``Entry``), and returns the target unchanged."""

        def wrap(obj: T) -> T:
            key = name if name is not None else obj.__name__  # type: ignore[attr-defined]
            self._entries[key] = Entry(key, obj, help, dict(extra))
            return obj

        return wrap

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """``{name: help}`` in the order of ``names()``."""
        return {name: self._entries[name].help for name in self.names()}

    def get(self, name: str) -> Entry[T]:
        """The entry of ``name``; an unknown name raises ``UserError``:
        ``unknown <kind> 'x' (choose from a, b, c[, <alternatives>])``."""
        if name not in self._entries:
            choices = ", ".join([*self.names(), *([self.alternatives] if self.alternatives else [])])
            raise UserError(f"unknown {self.kind} '{name}' (choose from {choices})")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
