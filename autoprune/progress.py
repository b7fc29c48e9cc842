"""Progress bars for every long step (rich), silenced with ``quiet``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_stderr = Console(stderr=True)
# Logs and pipes get a width that fits the result tables instead of rich's 80-column default.
console = _stderr if _stderr.is_terminal else Console(stderr=True, width=120)
# What a command was asked for (the tables of `runs` and `show`) goes to stdout, so that it pipes and
# redirects; progress, notes and errors go to stderr.
_stdout = Console()
output = _stdout if _stdout.is_terminal else Console(width=120)


@contextmanager
def progress_bar(description: str, total: int, *, quiet: bool = False) -> Iterator[Bar]:
    """A bar with ``advance(n)`` and ``note(text)``; a no-op when quiet."""
    if quiet:
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, note="")
        yield Bar(progress, task)


class Bar:
    """What ``progress_bar`` yields: ``advance`` and ``note`` update its rich bar, and do nothing when quiet."""

    def __init__(self, progress: Progress | None, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps done."""
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        """Show ``text`` after the bar (e.g. the running loss), in place of the previous note."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)
