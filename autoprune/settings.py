"""Settings declared once: each concept keeps its own frozen dataclass of settings, and every field
says its default, its help, its choices, which commands take it and whether it fixes a run's identity.

The command line (``autoprune.cli``), the resume check (``autoprune.config.resumed``) and the options
the benchmarks share (``autoprune.bench.run``) are all generated from these declarations, so an option
is written in one place only.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# The commands a setting can belong to. "search" covers `search` and `sensitivity`.
SEARCH, BENCH, TRAIN, INSPECT = "search", "bench", "train", "inspect"
ALL_COMMANDS = frozenset((SEARCH, BENCH, TRAIN, INSPECT))


def setting(default: Any, help: str | Callable[[], str], *, identity: bool = False, choices: Callable[[], Iterable[str]] | None = None,
            metavar: str | None = None, commands: Iterable[str] = (SEARCH,)) -> Any:
    """A dataclass field with its declaration.

    ``help``: one line for ``--help`` (the default is added there), or a function giving it when the parser
    is built (a registry's names); ``identity``: the setting defines what a
    run searches, so ``--resume`` refuses a different value (the others may change on resume);
    ``choices``: called when the parser is built (so a registry filled later is read whole);
    ``commands``: the commands that take it as an option.
    """
    meta = {"help": help, "identity": identity, "choices": choices, "metavar": metavar,
            "commands": frozenset(commands)}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One declared setting, as the parser and the resume check read it."""

    name: str
    default: Any
    type: type  # int, float, str or bool (an optional's inner type)
    help: str
    identity: bool
    choices: Callable[[], Iterable[str]] | None
    metavar: str | None
    commands: frozenset[str]

    @property
    def option(self) -> str:
        """The command-line spelling: ``--calib-batches``, and ``--no-adaptive-bn`` for a flag that is on by
        default."""
        flag = self.name.replace("_", "-")
        return f"--no-{flag}" if self.type is bool and self.default else f"--{flag}"


def declared(cls: type) -> list[Declared]:
    """The declared settings of the settings dataclass ``cls``, in declaration order (fields without a
    declaration are skipped)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        text = f.metadata["help"]
        out.append(Declared(f.name, f.default, inner[0] if inner else kind, text() if callable(text) else text,
                            f.metadata["identity"], f.metadata["choices"], f.metadata["metavar"],
                            f.metadata["commands"]))
    return out


def default_text(d: Declared) -> str:
    """``--help``'s "(default: ...)" for a declared setting; none for a flag, whose name says what it does."""
    return "" if d.type is bool else f" (default: {d.default})"


def add_options(parser: argparse.ArgumentParser | Any, settings: Iterable[Declared], *, explicit: bool) -> None:
    """Add one option per declared setting to ``parser`` (or an argument group).

    ``explicit``: the options have no defaults in the namespace (``argparse.SUPPRESS``), so that what the
    user gave can be told from what was left out (``--resume`` takes the rest from the run).
    """
    for d in settings:
        kwargs: dict[str, Any] = {"help": (d.help + default_text(d)).replace("%", "%%"), "dest": d.name}
        if d.type is bool:
            kwargs["action"] = "store_false" if d.default else "store_true"
        else:
            kwargs["type"] = d.type
            if d.choices is not None:
                kwargs["choices"] = list(d.choices())
            if d.metavar is not None:
                kwargs["metavar"] = d.metavar
        kwargs["default"] = argparse.SUPPRESS if explicit else d.default
        parser.add_argument(d.option, **kwargs)


def given(namespace: argparse.Namespace, settings: Iterable[Declared]) -> dict[str, Any]:
    """The settings present in ``namespace``: with ``explicit`` options, exactly those the user gave."""
    return {d.name: getattr(namespace, d.name) for d in settings if hasattr(namespace, d.name)}
