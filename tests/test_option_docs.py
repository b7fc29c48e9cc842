"""Every option of every command has its help text, and README names it."""

import argparse
import re
from pathlib import Path

import pytest

from autoprune.cli import _parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
COMMANDS = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def _parsers(parser: argparse.ArgumentParser, name: str):
    """(command, parser) for ``parser`` and every sub-command under it (``bench fidelity``, ...)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


EVERY = dict(p for command, parser in COMMANDS.items() for p in _parsers(parser, command))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_readme_names_every_option(command):
    missing = [o for o in _options(COMMANDS[command]) if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", README)]
    assert missing == [], f"autoprune {command}: README does not name {missing}"


def test_the_check_sees_a_missing_option():
    assert not re.search(r"(?<![\w-])--no-such-option(?![\w-])", README)
    assert len(_options(COMMANDS["search"])) > 40  # the parser's options were read


@pytest.mark.parametrize("command", sorted(EVERY))
def test_every_option_has_help(command):
    bare = [a.option_strings for a in EVERY[command]._actions if a.option_strings and not (a.help or "").strip()]
    assert bare == [], f"autoprune {command}: no --help text for {bare}"


def test_help_gives_defaults_but_not_for_flags():
    text = COMMANDS["search"].format_help()
    assert "(default: 40)" in text and "(default: 50%flops)" in text
    assert "(default: True)" not in text and "(default: False)" not in text  # --no-adaptive-bn read backwards
