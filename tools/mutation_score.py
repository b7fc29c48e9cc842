"""Per-module mutation score of the last `mutmut run` (``make mutate``), from mutants/<module>.py.meta.

Killed counts timeouts too (mutmut's own score does); "no tests" are mutants no selected test runs.
Prints a Markdown table; with a path argument, writes it there as well.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.configuration import config
from mutmut.stats import status_by_exit_code

COLUMNS = ["killed", "timeout", "survived", "no tests", "other"]


def table() -> str:
    modules = config().only_mutate  # [tool.mutmut] in pyproject.toml
    lines = ["| module | killed | timeout | survived | no tests | other | total | % killed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    every: Counter = Counter()
    for module in modules:
        meta = Path("mutants") / f"{module}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"].values() if meta.is_file() else []
        counts = Counter(s if s in COLUMNS else "other" for s in (status_by_exit_code[c] for c in codes))
        every.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("**all**", every))
    return "\n".join(lines) + "\n"


def _row(name: str, counts: Counter) -> str:
    total = sum(counts.values())
    score = f"{100 * (counts['killed'] + counts['timeout']) / total:.1f}" if total else "-"
    return f"| {name} | " + " | ".join(str(counts[c]) for c in COLUMNS) + f" | {total} | {score} |"


if __name__ == "__main__":
    text = table()
    print(text, end="")
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
