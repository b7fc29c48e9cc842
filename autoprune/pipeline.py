"""The whole job: model + data + budget -> searched, fine-tuned subnets and their Pareto front.

``search()`` is the one function behind both ``autoprune search`` and the Python API. It tells the story;
each step is a call into the module that owns it: prepare (``config``, ``workbench``), sensitivity
(``search.sensitivity``), search (``runners``), fine-tune (``finetuning``), write (``report``, ``export``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
from torch import nn

from autoprune.config import PYTHON_OBJECT, SearchConfig, resumed, shipped_weights, validate
from autoprune.errors import UserError
from autoprune.export import export_subnet
from autoprune.finetuning import finetune_phase
from autoprune.html_report import write_html_report
from autoprune.progress import console
from autoprune.report import export_run
from autoprune.results import RunDir, SubnetSpec
from autoprune.runners import make_runner
from autoprune.runners.study import run_search
from autoprune.runners.trial import describe_error
from autoprune.runs import subnets_table
from autoprune.search import SearchContext, get_strategy
from autoprune.search.allocation import along_safe_ratios
from autoprune.search.sensitivity import (
    GroupSensitivity,
    measure_sensitivity,
    read_sensitivity,
    write_sensitivity,
)
from autoprune.workbench import Workbench, open_workbench


@dataclass
class SearchResult:
    """What ``search`` returns: the run directory, the unpruned ``baseline`` (macs, params, proxy_acc,
    test_acc, latency_ms), the fine-tuned ``subnets``, the Pareto front of them as a table, every trial, and
    the subnet of best test accuracy."""

    run_dir: Path
    baseline: dict
    subnets: list[SubnetSpec]
    pareto: pd.DataFrame
    trials: pd.DataFrame
    best: SubnetSpec | None = field(default=None)


def search(model: str | nn.Module | None = None, data: str | None = None, *, budget: str | None = None,
           resume: bool = False, quiet: bool = False, **options) -> SearchResult:
    """Search per-group pruning ratios under ``budget``, fine-tune the best, return the Pareto front.

    ``model`` is a model spec (zoo name, ``pkg.module:factory``, ``file.py:factory``; default ``resnet20``) or an
    ``nn.Module`` holding trained weights; ``data`` a data spec (default ``fashion-mnist``); ``budget`` e.g.
    ``50%flops`` (the default); ``options`` are the other fields of ``SearchConfig``. With ``resume``, the run
    in ``out`` goes on with its recorded settings, the options given here over them where allowed. Raises
    ``UserError`` for bad input, before anything is written.
    """
    started = time.perf_counter()
    bench = _prepare(model, data, budget, options, resume, quiet, join_cluster=True)
    run, config = bench.run, bench.config
    timings = dict(run.read_status().get("timings", {})) if resume else {}
    timings["setup"] = timings.get("setup", 0.0) + bench.seconds
    runner = make_runner(bench, quiet=quiet)
    try:
        with run.discarded_on_failure(fresh=not resume):  # until its first trial, a failed run leaves nothing
            strategy = get_strategy(config.strategy, _context(bench))
            if config.uses_sensitivity:
                with _timed(timings, "sensitivity"):
                    _sensitivity_phase(bench, strategy.context, quiet=quiet)
            with _timed(timings, "search"):
                study, trials = run_search(bench, strategy, runner, quiet=quiet)
        with _timed(timings, "fine-tune"):
            subnets = finetune_phase(bench, study, strategy, runner, quiet=quiet)
    finally:
        runner.close()
    front = export_run(run.path, config={**run.read_config(), **asdict(config)}, budget=bench.budget,
                       base=bench.space.base_cost, baseline=bench.baseline, trials=trials, subnets=subnets,
                       timings=timings)
    if config.export:
        with _timed(timings, "export"):
            _export_front(config, run, front, model if isinstance(model, nn.Module) else None)
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - started
    run.write_status(status="complete", timings=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_html_report(run.path)
    if not quiet:
        _print_summary(bench.baseline, subnets, run, finetuning=config.finetune_top > 0)
    best = max(subnets, key=lambda s: s.test_acc) if subnets else None
    return SearchResult(run.path, bench.baseline, subnets, pd.DataFrame([s.row() for s in front]), trials, best)


def sensitivity(model: str | nn.Module | None = None, data: str | None = None, *, budget: str | None = None,
                resume: bool = False, quiet: bool = False, **options) -> list[GroupSensitivity]:
    """Only the per-group binary search: writes sensitivity.csv / .png in the run directory."""
    bench = _prepare(model, data, budget, options, resume, quiet)
    timings = {"setup": bench.seconds}
    with bench.run.discarded_on_failure(fresh=not resume), _timed(timings, "sensitivity"):
        results = _sensitivity_phase(bench, _context(bench), quiet=quiet)
    bench.run.write_status(status="complete", timings=timings)
    if not quiet:
        console.print(f"sensitivity: {bench.run.path / 'sensitivity.csv'}")
    return results


def _prepare(model: str | nn.Module | None, data: str | None, budget: str | None, options: dict, resume: bool,
             quiet: bool, *, join_cluster: bool = False) -> Workbench:
    """The validated, frozen config (on resume, the run's own, with ``options`` over it where allowed), and
    the workbench of the run it opens. ``join_cluster`` (a search, whose trials run on Ray): join the cluster of
    ``ray_address`` first, so that one that refuses this driver says so before the set-up's minutes."""
    unknown = set(options) - set(SearchConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown search options: {sorted(unknown)}")
    module = model if isinstance(model, nn.Module) else None
    given = {**options, **{k: v for k, v in (("model", PYTHON_OBJECT if module is not None else model),
                                              ("data", data), ("budget", budget)) if v is not None}}
    run = RunDir.check(given.get("out"), resume)
    config = SearchConfig(**given)
    if resume:
        config, changes = resumed(run.read_config(), given)
        for change in changes:
            console.print(f"--resume: {change}", markup=False)
    config, budget_obj = validate(config)
    config = replace(config, out=str(run.path), weights=config.weights or shipped_weights(config))  # as recorded
    if join_cluster and config.ray_address is not None:
        from autoprune.runners.ray_tune import connect

        connect(config.ray_settings())
    return open_workbench(config, budget_obj, run, module, resume=resume, quiet=quiet)


def _context(bench: Workbench) -> SearchContext:
    config = bench.config
    return SearchContext(bench.space, bench.budget, config.seed, config.tolerance, config.warm_start, config.trials,
                         pfp_eps=config.pfp_eps)


def _sensitivity_phase(bench: Workbench, context: SearchContext, *, quiet: bool) -> list[GroupSensitivity]:
    """Per-group safe ratios (measured once, then read back on resume, or read from ``sensitivity_from``); they
    feed the strategy and, with ``bounds_from_sensitivity``, narrow the space to the safe ratios or the
    allocation."""
    config, run, space = bench.config, bench.run, bench.space
    results = read_sensitivity(run.path)
    if results is None and config.sensitivity_from is not None:
        results = read_sensitivity(Path(config.sensitivity_from))
        if sorted(r.group for r in results) != sorted(space.group_names):
            raise UserError(f"--sensitivity-from: {config.sensitivity_from} was measured on other groups")
        write_sensitivity(run.path, results, config.tolerance, config.damage)
    if results is None:
        results = measure_sensitivity(space, bench.evaluator, tolerance=config.tolerance, damage=config.damage,
                                      quiet=quiet)
        write_sensitivity(run.path, results, config.tolerance, config.damage)
    context.safe_ratios = {r.group: r.max_safe_ratio for r in results}
    if config.bounds_from_sensitivity:
        allocation = along_safe_ratios(space, bench.budget, context.safe_ratios) or {}
        space.narrow({name: max(safe, allocation.get(name, safe)) for name, safe in context.safe_ratios.items()})
        run.write_config({**run.read_config(), "groups": space.describe()})
    return results


def _export_front(config: SearchConfig, run: RunDir, front: list[SubnetSpec], module: nn.Module | None) -> None:
    """Export every Pareto subnet in every ``--export`` format, each checked and timed
    (subnets/<id>/exports.json). A subnet that will not export is reported, and the others go on."""
    for s in front:
        for fmt in config.export_formats:
            try:
                check = export_subnet(run.path, s.id, fmt, base_model=module)
            except Exception as exc:  # noqa: BLE001  (a custom model an exporter cannot trace: say so, go on)
                console.print(f"[bold red]export of {s.id} as {fmt} failed:[/] {describe_error(exc).strip()}")
                continue
            console.print(f"exported {s.id} as {check.describe()}", markup=False, style=None if check.ok else "bold red")


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[phase]`` (phases accumulate over resumes)."""
    tic = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - tic


def _print_summary(baseline: dict, subnets: list[SubnetSpec], run: RunDir, *, finetuning: bool) -> None:
    if not finetuning:
        console.print(f"search done (no fine-tuning asked for): {run.path / 'trials.csv'}")
        return
    console.print(subnets_table(baseline, subnets))
    if not subnets:
        console.print("[bold yellow]no candidate was scored in full within the budget: try more --trials, "
                      "--pruner none or a looser budget[/]")
    console.print(f"report: {run.path / 'report.html'}")
