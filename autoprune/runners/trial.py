"""One trial, in three steps that every runner shares.

``begin_trial`` (where the study lives) asks the strategy for ratios and records their exact cost
against the budget; ``score_candidate`` (anywhere: this process or a worker) prunes and scores;
``finish_trial`` (where the study lives) records the score, or the error, and tells the study.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import optuna

from autoprune.budget import Budget
from autoprune.errors import UserError, one_line
from autoprune.measure import AdaptiveBNEvaluator
from autoprune.measure.latency import measure_latency
from autoprune.pruning.space import Cost, PruningSpace
from autoprune.results import RunDir, trial_row
from autoprune.search import Strategy


@dataclass
class PendingTrial:
    trial: optuna.Trial
    ratios: dict[str, float]
    cost: Cost
    feasible: bool
    started: float  # perf_counter at the ask

    @property
    def number(self) -> int:
        return self.trial.number


def begin_trial(study: optuna.Study, strategy: Strategy, space: PruningSpace, budget: Budget) -> PendingTrial:
    """Ask for the next candidate and record its cost and budget violations on the trial."""
    started = time.perf_counter()
    trial, ratios = strategy.ask(study)
    widths = space.kept_channels(ratios)  # per group: channels (weights, if weight-pruned) kept
    cost = space.cost_of_widths(widths)
    for name, violation in budget.violations(cost, space.base_cost).items():
        trial.set_constraint(name, violation)
    feasible = budget.feasible(cost, space.base_cost)
    trial.set_user_attr("macs", cost.macs)
    trial.set_user_attr("params", cost.params)
    trial.set_user_attr("widths", widths)
    if cost.latency_ms is not None:
        trial.set_user_attr("predicted_latency_ms", cost.latency_ms)  # unrounded: compared with the budget
    trial.set_user_attr("feasible", feasible)
    return PendingTrial(trial, ratios, cost, feasible, started)


def score_candidate(space: PruningSpace, evaluator: AdaptiveBNEvaluator, ratios: dict[str, float], *,
                    latency_batch: int | None = None) -> dict[str, float]:
    """Prune a copy of the model to ``ratios`` and score it: the hot path, timed step by step.

    With ``latency_batch``, also time the candidate's forward pass at that batch on the scorer's
    device: a short measurement (3 warm-up and 10 timed passes; on the demo 60 ms of 3.4 s a candidate),
    so that every candidate has a measured latency for the Pareto front and the dashboard.
    """
    tic = time.perf_counter()
    subnet, _ = space.prune(ratios)
    pruned = time.perf_counter()
    proxy = evaluator.score(subnet)
    scored = {"proxy_acc": proxy, "prune_seconds": pruned - tic,
              **{f"{step}_seconds": seconds for step, seconds in evaluator.last_seconds.items()}}
    if latency_batch is not None:
        tic = time.perf_counter()
        scored["latency_ms"] = measure_latency(subnet, tuple(space.example_input.shape[1:]), device=evaluator.device,
                                               batch=latency_batch, warmup=3, repeats=10)
        scored["latency_seconds"] = time.perf_counter() - tic
    return scored


def finish_trial(study: optuna.Study, strategy: Strategy, run: RunDir, group_names: list[str], pending: PendingTrial,
                 scored: dict[str, float] | None, error: str | None = None) -> optuna.trial.FrozenTrial:
    """Record a scored (or infeasible, ``scored`` None) trial, or a failed one with its ``error``,
    and append it to trials.csv."""
    trial = pending.trial
    if error is not None:
        trial.set_user_attr("error", error[-2000:])
        frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        for key, value in (scored or {}).items():
            trial.set_user_attr(key, round(value, 4) if key.endswith("_seconds") else value)
        trial.set_user_attr("seconds", round(time.perf_counter() - pending.started, 4))
        proxy = scored["proxy_acc"] if scored else 0.0
        frozen = study.tell(trial, strategy.objectives(proxy, pending.cost))
    run.append_trial(trial_row(frozen, group_names))
    return frozen


def describe_error(exc: BaseException) -> str:
    """What a failed trial records: the last frames of its traceback, then the exception in one
    line (``error_line`` reads it back; trials.csv shows it)."""
    frames = traceback.format_exception(exc)
    frames = frames[:-len(traceback.format_exception_only(exc))]  # the exception, possibly several lines
    if len(frames) > 3:
        frames = frames[:1] + frames[-2:]
    return "".join(frames) + one_line(exc) + "\n"



def error_line(error: str) -> str:
    """The exception line of an error that ``describe_error`` recorded: its last line."""
    lines = error.strip().splitlines()
    return lines[-1].strip() if lines else ""


def failed_with_error(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)) if "error" in t.user_attrs]


def close_left_behind(study: optuna.Study) -> None:
    """Fail, without an error, the trials a killed run left open, so they are neither counted nor
    repeated: one it was scoring (RUNNING), and one it had enqueued but not yet asked (WAITING; a
    strategy's fixed candidate is an enqueue and an ask). A WAITING trial left there would be handed
    out by the next ask in place of the candidate enqueued for it, and stay behind itself."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    for _ in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # Optuna closes only asked trials


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward ``--trials``: complete ones, and those that failed with an error
    (a trial left running by a killed run is failed without one, and is done again)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return len(complete) + len(failed_with_error(study))


FAILURES_BEFORE_GIVING_UP = 3


def _scored_within_budget(study: optuna.Study) -> bool:
    return any(t.user_attrs.get("feasible") for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _first_failure(failed: list[optuna.trial.FrozenTrial]) -> str:
    first = min(failed, key=lambda t: t.number)
    return f"the first, trial {first.number}: {error_line(first.user_attrs['error'])}"


def all_failing(study: optuna.Study) -> UserError | None:
    """The error to stop on early: the first candidates within the budget all failed, so the model,
    not a candidate, is broken (candidates over the budget are never run, and do not count)."""
    failed = failed_with_error(study)
    if len(failed) < FAILURES_BEFORE_GIVING_UP or _scored_within_budget(study):
        return None
    return UserError(f"the first {len(failed)} candidates within the budget all failed, so the search stopped; "
                     f"{_first_failure(failed)}")


def none_scored(study: optuna.Study) -> UserError | None:
    """The error to end a search on: no candidate within the budget was scored, and some failed.
    (Where none failed, none was within the budget: that is a result, not an error.)"""
    failed = failed_with_error(study)
    if not failed or _scored_within_budget(study):
        return None
    over = sum(1 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return UserError(f"every candidate within the budget failed ({len(failed)} failed, {over} over the budget); "
                     f"{_first_failure(failed)}")
