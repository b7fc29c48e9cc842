"""Dispatch ``autoprune bench STUDY`` to its study with a ``SearchConfig`` for the shared options."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from autoprune.bench import STUDIES
from autoprune.bench.common import BenchDir
from autoprune.config import SearchConfig, settings_for, validate
from autoprune.errors import UserError
from autoprune.settings import BENCH

# the search settings every study takes (declared with the bench command), in the order bench.json records them
_SHARED = tuple(d.name for found in settings_for(BENCH).values() for d in found)
_RECORDED_WHEN_SET = ("amp", "output_key")  # in bench.json only when given, so studies recorded before them resume
_NOT_OPTIONS = ("command", "study", "out", "resume", "quiet")  # what the bench parser holds besides options


def run_bench(study: str, config: SearchConfig, *, out: str | None = None, resume: bool = False,
              quiet: bool = False, command: str | None = None, **options) -> Path:
    """Run one study (the Python face of ``autoprune bench``); returns its output directory. Raises
    ``UserError`` for an unknown study, invalid settings, a negative option or one the study's ``check``
    refuses (all before anything is written), and where ``BenchDir`` does."""
    if study not in STUDIES:
        raise UserError(f"unknown study '{study}' (choose from {', '.join(STUDIES)})")
    config, _ = validate(config)
    for key, value in options.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UserError(f"--{key.replace('_', '-')} must not be negative")
    module = importlib.import_module(f"autoprune.bench.{study}")
    module.check(**options)  # before anything is written
    # what --resume must find unchanged; --amp and --output-key only where given, so studies recorded before
    # they existed resume
    shared = {k: getattr(config, k) for k in _SHARED if k not in _RECORDED_WHEN_SET or getattr(config, k)}
    settings = {**shared, **options}
    bench = BenchDir(out or Path("results") / "bench" / study, study, settings, resume=resume,
                     command=command or f"python: autoprune.bench.run.run_bench({study!r}, ...)")
    module.run(config, bench, quiet=quiet, **options)
    return bench.path


def run_from_args(args: argparse.Namespace, command: str) -> int:
    """``autoprune bench STUDY`` from the parsed ``args``: the shared search options make the ``SearchConfig``,
    the study's own are passed as parsed, and ``command`` (the command line) is recorded. Returns 0; raises
    ``UserError`` for bad options (``run_bench``)."""
    config = SearchConfig(**{k: getattr(args, k) for k in _SHARED})  # parsed with their defaults
    own = {k: v for k, v in vars(args).items() if k not in _SHARED and k not in _NOT_OPTIONS}  # as the parser has them
    run_bench(args.study, config, out=args.out, resume=args.resume, quiet=args.quiet, command=command, **own)
    return 0
