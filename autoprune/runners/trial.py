"""One trial, in three steps that every runner shares.

``begin_trial`` (where the study lives) asks the strategy for ratios and records their exact cost
against the budget; ``score_candidate`` (anywhere: this process or a worker) prunes and scores;
``finish_trial`` (where the study lives) records the score, or the error, and tells the study.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import optuna

from autoprune.budget import Budget
from autoprune.candidate import COMPLETE, STOPPED, Candidate, candidates
from autoprune.errors import UserError, one_line
from autoprune.measure import AdaptiveBNEvaluator
from autoprune.measure.evaluator import StopRule
from autoprune.pruning.base import Space
from autoprune.results import RunDir
from autoprune.search import Strategy


@dataclass
class PendingTrial:
    """A trial between its ask and its tell: the live Optuna ``trial``, its ``candidate`` so far, the user
    attributes already written from it, ``started`` (``time.perf_counter()`` at the ask), and ``reused``: the score
    of an earlier trial of the same widths, which it takes rather than scoring the same subnet again (None: none)."""

    trial: optuna.Trial
    candidate: Candidate
    written: dict[str, Any]
    started: float
    reused: dict[str, Any] | None = None

    @property
    def to_score(self) -> bool:
        """Whether a runner scores it: within the budget, and not a subnet scored before."""
        return self.candidate.feasible and self.reused is None

    @property
    def number(self) -> int:
        """The trial's number in the study."""
        return self.trial.number


def begin_trial(study: optuna.Study, strategy: Strategy, space: Space, budget: Budget) -> PendingTrial:
    """Ask for the next candidate, cost it and record its cost, widths and budget violations on the trial. A
    candidate within the budget whose widths an earlier trial scored (complete or stopped) takes that score
    (``PendingTrial.reused``; ``same_as``): scoring is deterministic, so the same subnet would score the same."""
    started = time.perf_counter()
    trial, ratios = strategy.ask(study)
    widths = space.kept_channels(ratios)  # per group: channels (weights, if weight-pruned) kept
    cost = space.cost_of_widths(widths)
    for name, violation in budget.violations(cost, space.base_cost).items():
        trial.set_constraint(name, violation)
    candidate = Candidate(trial.number, ratios).costed(widths, cost,
                                                       feasible=budget.feasible(cost, space.base_cost))
    reused = None
    earlier = _scored_before(study, widths) if candidate.feasible else None
    if earlier is not None:
        candidate = replace(candidate, same_as=earlier.number)
        reused = {"proxy_acc": earlier.proxy_acc, "scored_images": earlier.scored_images,
                  "stopped": earlier.state == STOPPED}
    return PendingTrial(trial, candidate, candidate.write_attrs(trial), started, reused)


def _scored_before(study: optuna.Study, widths: Mapping[str, int]) -> Candidate | None:
    """The first trial of ``study`` scored at exactly ``widths`` (complete within the budget, or stopped)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.user_attrs.get("widths") == widths and t.user_attrs.get("feasible", True):
            return Candidate.from_trial(t)
    return None


def score_candidate(space: Space, evaluator: AdaptiveBNEvaluator, ratios: dict[str, float],
                    stop: StopRule | None = None) -> dict[str, Any]:
    """Prune a copy of the model to ``ratios`` and score it: the hot path, timed step by step. Returns the
    ``Candidate.SCORE_FIELDS`` it measured (the proxy accuracy, a fraction, and the images it saw; seconds of
    each step) and ``stopped`` (whether ``stop``, the study's pruner, stopped the score early: see
    ``AdaptiveBNEvaluator.score``), the dict a Ray worker reports back. Its latency is the space's prediction
    (``Space.cost``), not measured here.
    """
    tic = time.perf_counter()
    subnet, _ = space.prune(ratios)
    pruned = time.perf_counter()
    proxy = evaluator.score(subnet, stop=stop)
    return {"proxy_acc": proxy, "scored_images": evaluator.last_images, "stopped": evaluator.last_stopped,
            "prune_seconds": pruned - tic,
            **{f"{step}_seconds": seconds for step, seconds in evaluator.last_seconds.items()}}


def finish_trial(study: optuna.Study, strategy: Strategy, run: RunDir, group_names: list[str], pending: PendingTrial,
                 scored: Mapping[str, Any] | None, error: str | None = None) -> Candidate:
    """Tell the study a scored candidate (``scored``; None: the score it reused, or none, infeasible), a stopped
    one (``scored["stopped"]``: Optuna's ``PRUNED``), or a failed one with its ``error``; append its row to
    trials.csv. Returns the candidate as the study now records it."""
    trial = pending.trial
    scored = pending.reused if scored is None else scored
    if error is not None:
        pending.candidate.failed(error).write_attrs(trial, pending.written)
        frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        told = pending.candidate.scored(scored or {}, seconds=time.perf_counter() - pending.started)
        told.write_attrs(trial, pending.written)
        if told.state == STOPPED:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            frozen = study.tell(trial, strategy.objectives(told.proxy_acc or 0.0, told.cost))
    candidate = Candidate.from_trial(frozen, group_names)
    run.append_trial(candidate.row())
    return candidate


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


def failed_with_error(study: optuna.Study) -> list[Candidate]:
    """The failed candidates that recorded an error (not those a killed run left open), in trial order."""
    return [c for c in candidates(study, states=(optuna.trial.TrialState.FAIL,)) if c.error is not None]


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
    """Trials that count toward ``--trials``: complete and stopped ones, and those that failed with an error
    (a trial left running by a killed run is failed without one, and is done again)."""
    complete = study.get_trials(deepcopy=False,
                                states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return len(complete) + len(failed_with_error(study))


FAILURES_BEFORE_GIVING_UP = 3


def _scored_within_budget(study: optuna.Study) -> bool:
    return any(c.state == COMPLETE for c in candidates(study, states=(optuna.trial.TrialState.COMPLETE,)))


def _first_failure(failed: list[Candidate]) -> str:
    first = min(failed, key=lambda c: c.number)
    return f"the first, trial {first.number}: {error_line(first.error)}"


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
