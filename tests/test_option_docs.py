"""Every option of every command has its help text; docs/cli.md names every option of every command, and
README.md names every command."""

import argparse
import re
from pathlib import Path

import pytest

from autoprune.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
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


def _names(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", sorted(EVERY))
def test_cli_doc_names_every_option(command):
    missing = [o for o in _options(EVERY[command]) if not _names(CLI_DOC, o)]
    assert missing == [], f"autoprune {command}: docs/cli.md does not name {missing}"


@pytest.mark.parametrize("command", sorted(EVERY))
def test_cli_doc_names_every_command(command):
    assert _names(CLI_DOC, f"autoprune {command}"), f"docs/cli.md does not name autoprune {command}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_readme_names_every_command(command):
    assert _names(README, f"autoprune {command}"), f"README does not name autoprune {command}"


def test_the_checks_see_what_is_missing():
    assert not _names(CLI_DOC, "--no-such-option") and not _names(README, "autoprune no-such-command")
    assert _names("`--budget`", "--budget") and not _names("--budgets", "--budget")  # whole names only
    assert len(_options(COMMANDS["search"])) > 40 and len(EVERY) > len(COMMANDS)  # the parser's options were read


@pytest.mark.parametrize("command", sorted(EVERY))
def test_every_option_has_help(command):
    bare = [a.option_strings for a in EVERY[command]._actions if a.option_strings and not (a.help or "").strip()]
    assert bare == [], f"autoprune {command}: no --help text for {bare}"


def test_help_gives_defaults_but_not_for_flags():
    text = COMMANDS["search"].format_help()
    assert "(default: 40)" in text and "(default: 50%flops)" in text
    assert "(default: True)" not in text and "(default: False)" not in text  # --no-adaptive-bn read backwards
