"""The search step: the run's Optuna study, filled by a runner until it holds the asked trials."""

from __future__ import annotations

import logging

import optuna
import pandas as pd

from autoprune.candidate import COMPLETE, Candidate, candidates, trials_frame
from autoprune.progress import progress_bar
from autoprune.results import STUDY_NAME
from autoprune.runners.trial import close_left_behind, finished_count, none_scored
from autoprune.search import Strategy
from autoprune.search.pruners import make_pruner
from autoprune.workbench import Workbench


def open_study(bench: Workbench, strategy: Strategy) -> optuna.Study:
    """The run's study in its ``study.db`` (created, or reopened on resume with the trials a killed run left
    running closed as failed), with the run's pruner (``autoprune.search.pruners``) and what optuna-dashboard
    shows of the run as study attributes."""
    config, space = bench.config, bench.space
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(storage=bench.run.storage_url, study_name=STUDY_NAME,
                                directions=list(strategy.directions), sampler=strategy.sampler(),
                                pruner=make_pruner(config.pruner), load_if_exists=True)
    close_left_behind(study)
    held = len(study.get_trials(deepcopy=False))
    if held:  # resumed: a sampler that goes on from where the run stopped, not one that repeats its first trials
        study.sampler = strategy.sampler(resumed_at=held)
    for key, value in {"model": config.model, "data": config.data, "budget": config.budget,
                       "strategy": config.strategy, "criterion": config.criterion, "base_macs": space.base_cost.macs,
                       "base_params": space.base_cost.params, "base_latency_ms": bench.baseline["latency_ms"],
                       "latency_batch": config.latency_batch, "device": config.device}.items():
        study.set_user_attr(key, value)
    return study


def run_search(bench: Workbench, strategy: Strategy, runner, *,
               quiet: bool) -> tuple[optuna.Study, pd.DataFrame]:
    """Ask ``strategy`` for candidates through ``runner`` until ``config.trials`` trials are finished, with a
    progress bar of the best proxy so far; returns the study and its trials (as trials.csv, which it writes).
    Raises ``UserError`` when every candidate within the budget failed."""
    study = open_study(bench, strategy)
    names = bench.space.group_names
    bench.run.write_table("trials.csv", trials_frame(study, names))
    done = finished_count(study)
    best = max((c.proxy_acc or 0.0 for c in candidates(study) if c.state == COMPLETE), default=0.0)
    with progress_bar("search", bench.config.trials, quiet=quiet) as bar:
        bar.advance(done)

        def finished(candidate: Candidate) -> None:
            nonlocal best
            if candidate.state == COMPLETE:  # a stopped score is of fewer images
                best = max(best, candidate.proxy_acc or 0.0)
            bar.advance()
            bar.note(f"best proxy {best:.2%}")

        if bench.config.trials > done:
            runner.run_trials(study, strategy, bench.config.trials - done, finished)
    fatal = none_scored(study)  # every candidate within the budget failed: an error, not "none met the budget"
    if fatal is not None:
        raise fatal
    trials = trials_frame(study, names)
    bench.run.write_table("trials.csv", trials)
    return study, trials
