"""One trial's bookkeeping (autoprune/runners/trial.py): what begin/score/finish record on the study and in
trials.csv, the errors quoted, and what a resumed run counts. Fakes stand in for the space, the scorer and
the clock, so every number below is exact."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from autoprune.budget import parse_budget
from autoprune.candidate import Candidate
from autoprune.errors import UserError
from autoprune.pruning.space import Cost
from autoprune.results import RunDir
from autoprune.runners import trial as trial_module
from autoprune.runners.trial import (
    FAILURES_BEFORE_GIVING_UP,
    PendingTrial,
    all_failing,
    begin_trial,
    close_left_behind,
    describe_error,
    error_line,
    failed_with_error,
    finish_trial,
    finished_count,
    none_scored,
    score_candidate,
)

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


class FakeSpace:
    """Two groups of 10 channels; a kept channel costs 10 MACs and 2 params, and 0.5 ms where timed."""

    base_cost = Cost(macs=200, params=40, latency_ms=10.0)

    def __init__(self, latency: bool = False) -> None:
        self.latency = latency
        self.pruned = []

    def kept_channels(self, ratios):
        return {name: round(10 * (1 - r)) for name, r in ratios.items()}

    def cost_of_widths(self, widths):
        kept = sum(widths.values())
        return Cost(macs=10 * kept, params=2 * kept, latency_ms=0.5 * kept if self.latency else None)

    def prune(self, ratios):
        self.pruned.append(ratios)
        return ("subnet", ratios), {}

    example_input = SimpleNamespace(shape=(1, 3, 8, 8))  # a batch of one, as a tensor has it


class FakeStrategy:
    def __init__(self, ratios) -> None:
        self.ratios = ratios

    def ask(self, study):
        study.enqueue_trial(self.ratios)
        trial = study.ask()
        return trial, {name: trial.suggest_float(name, 0.0, 1.0) for name in self.ratios}

    def objectives(self, proxy, cost):
        return [proxy, cost.macs]


class FakeEvaluator:
    device = "cpu"

    def __init__(self, proxy: float) -> None:
        self.proxy = proxy
        self.scored = []
        self.last_seconds = {}

    def score(self, subnet, stop=None):
        self.scored.append(subnet)
        self.last_seconds = {"recalibrate": 0.25, "evaluate": 0.125}
        self.last_images, self.last_stopped = 2000, False
        return self.proxy


def _study():
    return optuna.create_study(directions=["maximize", "minimize"])


def _clock(monkeypatch, *ticks):
    ticks = iter(ticks)
    monkeypatch.setattr(trial_module.time, "perf_counter", lambda: next(ticks))


# --- begin -----------------------------------------------------------------------------------------


def test_begin_records_cost_widths_and_each_constraint(monkeypatch):
    _clock(monkeypatch, 5.0)
    study = _study()
    pending = begin_trial(study, FakeStrategy({"a": 0.5, "b": 0.2}), FakeSpace(), parse_budget("70%flops,40%params"))
    candidate = pending.candidate
    assert candidate.ratios == {"a": 0.5, "b": 0.2} and pending.started == 5.0 and pending.number == 0
    assert candidate.cost == Cost(130, 26) and candidate.feasible is False  # 130 <= 140 MACs, 26 > 16 params
    assert candidate.state == "infeasible" and candidate.widths == {"a": 5, "b": 8}
    trial = study.trials[0]
    assert trial.user_attrs == {"ratios": {"a": 0.5, "b": 0.2}, "macs": 130, "params": 26, "widths": {"a": 5, "b": 8},
                                "feasible": False}
    assert pending.written == trial.user_attrs
    assert trial.constraints == {"70%flops": pytest.approx(130 / 140 - 1), "40%params": pytest.approx(26 / 16 - 1)}


def test_begin_records_the_predicted_latency_unrounded():
    study = _study()
    pending = begin_trial(study, FakeStrategy({"a": 0.7, "b": 0.7}), FakeSpace(latency=True),
                          parse_budget("40%latency"))
    assert pending.candidate.feasible is True and pending.candidate.cost.latency_ms == 3.0
    assert pending.candidate.state == "running"
    assert study.trials[0].user_attrs["predicted_latency_ms"] == 3.0
    assert study.trials[0].user_attrs["feasible"] is True
    assert study.trials[0].constraints == {"40%latency": pytest.approx(3.0 / 4.0 - 1)}


def _run_one(study, run, ratios, evaluator, *, budget="70%flops", stopped=False):
    """One trial through the steps a runner takes: begin, score unless ``to_score`` says not, finish."""
    pending = begin_trial(study, FakeStrategy(ratios), FakeSpace(), parse_budget(budget))
    scored = None
    if pending.to_score:
        scored = {**score_candidate(FakeSpace(), evaluator, pending.candidate.ratios), "stopped": stopped}
    return pending, finish_trial(study, FakeStrategy({}), run, ["a", "b"], pending, scored)


def test_a_subnet_scored_before_takes_its_score_and_is_not_scored_again(tmp_path):
    study, run, evaluator = _study(), RunDir(tmp_path), FakeEvaluator(0.625)
    _run_one(study, run, {"a": 0.5, "b": 0.5}, evaluator)
    evaluator.proxy = 0.25  # what a second scoring would say
    pending, again = _run_one(study, run, {"a": 0.52, "b": 0.48}, evaluator)  # other ratios, the same widths (5, 5)
    assert not pending.to_score and len(evaluator.scored) == 1
    assert (again.state, again.proxy_acc, again.scored_images, again.same_as) == ("complete", 0.625, 2000, 0)
    assert study.trials[1].values == [0.625, 100] and study.trials[1].user_attrs["same_as"] == 0
    _, other = _run_one(study, run, {"a": 0.4, "b": 0.5}, evaluator)  # widths (6, 5): scored
    assert (other.proxy_acc, other.same_as, len(evaluator.scored)) == (0.25, None, 2)
    same_as = run.read_trials()["same_as"]
    assert same_as.isna().tolist() == [True, False, True] and same_as[1] == 0


def test_a_repeat_of_a_stopped_subnet_is_stopped_and_of_an_infeasible_one_is_not_reused(tmp_path):
    study, run, evaluator = _study(), RunDir(tmp_path), FakeEvaluator(0.5)
    _run_one(study, run, {"a": 0.5, "b": 0.5}, evaluator, stopped=True)
    _, again = _run_one(study, run, {"a": 0.5, "b": 0.5}, evaluator)
    assert (again.state, again.same_as, len(evaluator.scored)) == ("stopped", 0, 1)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    _run_one(study, run, {"a": 0.0, "b": 0.0}, evaluator)  # over the budget: never scored
    pending, _ = _run_one(study, run, {"a": 0.0, "b": 0.0}, evaluator)
    assert pending.candidate.state == "infeasible" and pending.reused is None and len(evaluator.scored) == 1


# --- score -----------------------------------------------------------------------------------------


def test_score_times_each_step(monkeypatch):
    _clock(monkeypatch, 1.0, 1.5)
    space, evaluator = FakeSpace(), FakeEvaluator(0.625)
    scored = score_candidate(space, evaluator, {"a": 0.5})
    assert space.pruned == [{"a": 0.5}] and evaluator.scored == [("subnet", {"a": 0.5})]
    assert scored == {"proxy_acc": 0.625, "scored_images": 2000, "stopped": False, "prune_seconds": 0.5,
                      "recalibrate_seconds": 0.25, "evaluate_seconds": 0.125}


# --- finish ----------------------------------------------------------------------------------------


def _begun(monkeypatch, study, tmp_path, ratios=None, budget="70%flops"):
    _clock(monkeypatch, 10.0)
    return begin_trial(study, FakeStrategy(ratios or {"a": 0.5, "b": 0.5}), FakeSpace(), parse_budget(budget))


def test_finish_records_the_score_and_appends_the_row(monkeypatch, tmp_path):
    study, run = _study(), RunDir(tmp_path)
    pending = _begun(monkeypatch, study, tmp_path)
    _clock(monkeypatch, 12.123456)
    scored = {"proxy_acc": 0.123456789, "prune_seconds": 0.123456}
    candidate = finish_trial(study, FakeStrategy({}), run, ["a", "b"], pending, scored)
    frozen = study.trials[0]
    assert frozen.state == COMPLETE and frozen.values == [0.123456789, 100]
    assert frozen.user_attrs["proxy_acc"] == 0.123456789  # only the seconds are rounded
    assert frozen.user_attrs["prune_seconds"] == 0.1235
    assert frozen.user_attrs["seconds"] == 2.1235
    assert candidate.state == "complete" and candidate.proxy_acc == 0.123456789 and candidate.seconds == 2.1235
    assert candidate.ratios == {"a": 0.5, "b": 0.5} and candidate.cost == Cost(100, 20)
    row = run.read_trials().iloc[0]
    assert (row["number"], row["state"], row["macs"], row["proxy_acc"], row["ratio:a"]) == (0, "complete", 100,
                                                                                          0.123456789, 0.5)


def test_finish_of_an_infeasible_candidate_tells_a_zero_proxy(monkeypatch, tmp_path):
    study, run = _study(), RunDir(tmp_path)
    pending = _begun(monkeypatch, study, tmp_path, {"a": 0.0, "b": 0.0}, budget="50%flops")
    _clock(monkeypatch, 10.5)
    candidate = finish_trial(study, FakeStrategy({}), run, ["a", "b"], pending, None)
    frozen = study.trials[0]
    assert frozen.state == COMPLETE and frozen.values == [0.0, 200]
    assert frozen.user_attrs["seconds"] == 0.5 and "proxy_acc" not in frozen.user_attrs
    assert candidate.state == "infeasible" and candidate.seconds == 0.5
    assert run.read_trials()["state"].tolist() == ["infeasible"]


def test_finish_of_a_failed_candidate_keeps_the_end_of_its_error(monkeypatch, tmp_path):
    study, run = _study(), RunDir(tmp_path)
    pending = _begun(monkeypatch, study, tmp_path)
    error = "x" * 3000 + "\nValueError: odd width\n"
    candidate = finish_trial(study, FakeStrategy({}), run, ["a", "b"], pending, {"proxy_acc": 0.9}, error=error)
    frozen = study.trials[0]
    assert frozen.state == FAIL and frozen.values is None
    assert candidate.state == "fail" and candidate.error == error[-2000:] and candidate.proxy_acc is None
    assert frozen.user_attrs["error"] == error[-2000:] and len(frozen.user_attrs["error"]) == 2000
    assert "proxy_acc" not in frozen.user_attrs and "seconds" not in frozen.user_attrs
    row = run.read_trials().iloc[0]
    assert (row["state"], row["error"]) == ("fail", "ValueError: odd width")


# --- the error a failed trial records ---------------------------------------------------------------


def _deep(n: int):
    if n == 0:
        raise ValueError("odd width:\n 3 channels")
    _deep(n - 1)


def _caught(depth: int) -> BaseException:
    try:
        _deep(depth)
    except ValueError as exc:
        return exc


def test_describe_error_keeps_the_first_and_last_two_frames_then_the_exception_in_one_line():
    text = describe_error(_caught(3))  # frames: _caught, _deep x4
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert sum(line.startswith("  File ") for line in lines) == 2
    assert text.endswith("\nValueError: odd width: 3 channels\n")
    assert text.count("ValueError: odd width") == 1
    assert error_line(text) == "ValueError: odd width: 3 channels"


def test_describe_error_of_a_short_traceback_keeps_every_frame():
    exc = _caught(0)  # frames: _caught, _deep
    assert sum(line.startswith("  File ") for line in describe_error(exc).splitlines()) == 2
    exc = _caught(1)  # frames: _caught, _deep x2: the first one is dropped
    lines = describe_error(exc).splitlines()
    assert sum(line.startswith("  File ") for line in lines) == 2
    assert "_caught" not in describe_error(exc)


def test_describe_error_with_a_note():
    exc = _caught(0)
    exc.add_note("while scoring t0003")
    text = describe_error(exc)
    assert text.endswith("\nValueError: odd width: 3 channels while scoring t0003\n")
    assert "\nwhile scoring" not in text


def test_error_line():
    assert error_line("Traceback\n  File x\n  ValueError: bad  \n\n") == "ValueError: bad"
    assert error_line("") == "" and error_line("  \n ") == ""


# --- what a resumed run counts, and when a search gives up ------------------------------------------


def _add(study, state, *, error=None, feasible=True, n=1):
    for _ in range(n):
        attrs = {"feasible": feasible} | ({"error": error} if error is not None else {})
        study.add_trial(optuna.trial.create_trial(state=state, values=[0.5, 1.0] if state == COMPLETE else None,
                                                  user_attrs=attrs))


def test_finished_count_leaves_out_trials_failed_without_an_error():
    study = _study()
    _add(study, COMPLETE, n=2)
    _add(study, COMPLETE, feasible=False)
    _add(study, FAIL, error="ValueError: x", n=2)
    _add(study, FAIL)  # left running by a killed run, failed on the resume
    assert finished_count(study) == 5
    assert [t.number for t in failed_with_error(study)] == [3, 4]


def test_an_error_counts_only_on_a_failed_trial():
    study = _study()
    trial = study.ask()  # killed after recording its error, before telling the study
    trial.set_user_attr("error", "ValueError: x")
    assert failed_with_error(study) == [] and finished_count(study) == 0


def test_close_left_behind_fails_running_and_waiting_trials(tmp_path):
    study = _study()
    _add(study, COMPLETE)
    study.ask()  # being scored when the run was killed
    study.enqueue_trial({})  # enqueued, not asked
    close_left_behind(study)
    assert [t.state for t in study.trials] == [COMPLETE, FAIL, FAIL]
    assert all("error" not in t.user_attrs for t in study.trials[1:])
    assert finished_count(study) == 1


def test_a_search_gives_up_after_three_failures_within_the_budget():
    study = _study()
    assert FAILURES_BEFORE_GIVING_UP == 3
    _add(study, COMPLETE, feasible=False)  # over the budget: never run, does not count
    _add(study, FAIL, error="Traceback\nValueError: first\n")
    _add(study, FAIL, error="RuntimeError: second")
    assert all_failing(study) is None
    _add(study, FAIL, error="RuntimeError: third")
    error = all_failing(study)
    assert isinstance(error, UserError)
    assert str(error) == ("the first 3 candidates within the budget all failed, so the search stopped; "
                          "the first, trial 1: ValueError: first")
    _add(study, COMPLETE)  # one scored within the budget: the model works
    assert all_failing(study) is None


def test_none_scored_names_the_first_failure():
    study = _study()
    assert none_scored(study) is None
    _add(study, COMPLETE, feasible=False, n=2)
    assert none_scored(study) is None  # none failed: none was within the budget, a result
    _add(study, FAIL)  # failed without an error: not counted
    _add(study, FAIL, error="RuntimeError: late")
    _add(study, FAIL, error="ValueError: early")
    study_trials = study.trials
    assert [t.number for t in study_trials] == [0, 1, 2, 3, 4]
    assert str(none_scored(study)) == ("every candidate within the budget failed (2 failed, 2 over the budget); "
                                       "the first, trial 3: RuntimeError: late")
    _add(study, COMPLETE)
    assert none_scored(study) is None


def test_the_first_failure_is_the_lowest_trial_number():
    study = _study()
    for number, message in ((0, "A: zero"), (1, "B: one"), (2, "C: two")):
        _add(study, FAIL, error=message)
        assert study.trials[number].user_attrs["error"] == message
    failed = list(reversed(failed_with_error(study)))
    assert trial_module._first_failure(failed) == "the first, trial 0: A: zero"


def test_pending_trial_number_is_its_trials():
    study = _study()
    study.ask()
    pending = PendingTrial(study.ask(), Candidate(7, {}), {}, 0.0)
    assert pending.number == 1

