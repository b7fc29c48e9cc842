"""One candidate record (autoprune/candidate.py): trial -> Candidate -> Optuna user attributes -> trial, and
Candidate -> trials.csv row, with values that tell every field apart."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import replace

import optuna
import pytest

from autoprune.candidate import TRIAL_COLUMNS, Candidate, candidates, trials_frame
from autoprune.measure.cost import Cost

COMPLETE, FAIL, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED
NAMES = ["conv1", "fc"]
Group = namedtuple("Group", "name low")  # what ratios_to_prune reads of a space's group
# a worker's report: the score, each step's seconds unrounded, and a key of Tune's own
REPORT = {"proxy_acc": 0.8125, "scored_images": 2000, "stopped": False, "prune_seconds": 0.123456, "recalibrate_seconds": 0.254321,
          "evaluate_seconds": 0.376543, "time_this_iter_s": 9.0}


def _asked(study: optuna.Study, ratios: dict[str, float]) -> tuple[optuna.Trial, Candidate]:
    trial = study.ask()
    for name in ratios:
        trial.suggest_float(name, 0.0, 1.0)
    return trial, Candidate(trial.number, {name: trial.params[name] for name in ratios})


@pytest.fixture(params=["memory", "sqlite"])
def study(request, tmp_path):
    """The in-memory storage keeps Python objects; study.db keeps JSON: both must give the same candidate."""
    storage = None if request.param == "memory" else f"sqlite:///{tmp_path / 'study.db'}"
    return optuna.create_study(storage=storage, directions=["maximize", "minimize"])


def test_a_scored_candidate_reads_back_from_its_trial_as_it_was_told(study):
    study.enqueue_trial({"conv1": 0.123456789, "fc": 0.5}, user_attrs={"draws": 7})
    trial, asked = _asked(study, {"conv1": 0.0, "fc": 0.0})
    costed = asked.costed({"conv1": 14, "fc": 32}, Cost(130, 26, 3.25), feasible=True)
    written = costed.write_attrs(trial)
    assert written == {"ratios": {"conv1": 0.123456789, "fc": 0.5}, "macs": 130, "params": 26, "widths": {"conv1": 14, "fc": 32}, "predicted_latency_ms": 3.25,
                       "feasible": True}
    told = costed.scored(REPORT, seconds=2.123456)
    assert (told.state, told.proxy_acc, told.seconds, told.prune_seconds, told.recalibrate_seconds,
            told.evaluate_seconds) == ("complete", 0.8125, 2.1235, 0.1235, 0.2543, 0.3765)  # seconds to 0.1 ms
    told.write_attrs(trial, written)
    frozen = study.tell(trial, [0.8125, 130])

    back = Candidate.from_trial(frozen, NAMES)
    assert back == replace(told, draws=7)  # and the strategy's draws
    assert frozen.user_attrs == back.user_attrs()
    assert back.row() == {
        "number": 0, "state": "complete", "macs": 130, "params": 26, "proxy_acc": 0.8125, "scored_images": 2000,
        "seconds": 2.1235,
        "prune_seconds": 0.1235, "recalibrate_seconds": 0.2543, "evaluate_seconds": 0.3765,
        "draws": 7, "same_as": None, "predicted_latency_ms": 3.25, "error": None,
        "ratio:conv1": 0.123457, "ratio:fc": 0.5}
    assert list(back.row()) == [*TRIAL_COLUMNS, "ratio:conv1", "ratio:fc"]


def test_each_attribute_is_written_once(study):
    trial, asked = _asked(study, {"conv1": 0.0})
    writes = []
    real = trial.set_user_attr
    trial.set_user_attr = lambda key, value: (writes.append(key), real(key, value))
    written = asked.costed({"conv1": 3}, Cost(10, 2), feasible=True).write_attrs(trial)
    assert writes == ["ratios", "macs", "params", "widths", "feasible"]  # no predicted latency: no latency table
    asked.costed({"conv1": 3}, Cost(10, 2), feasible=True).scored({"proxy_acc": 0.5}, seconds=1.0).write_attrs(
        trial, written)
    assert writes == ["ratios", "macs", "params", "widths", "feasible", "proxy_acc", "seconds"]


def test_an_infeasible_candidate_stays_infeasible_and_unscored(study):
    trial, asked = _asked(study, {"conv1": 0.0, "fc": 0.25})
    costed = asked.costed({"conv1": 16, "fc": 24}, Cost(500, 60), feasible=False)
    assert costed.state == "infeasible" and not costed.feasible
    told = costed.scored({}, seconds=0.000123456)
    written = costed.write_attrs(trial)
    told.write_attrs(trial, written)
    frozen = study.tell(trial, [0.0, 500])
    back = Candidate.from_trial(frozen, NAMES)
    assert back == told and back.state == "infeasible" and back.seconds == 0.0001 and back.proxy_acc is None
    assert frozen.user_attrs["feasible"] is False
    assert back.row()["state"] == "infeasible" and back.row()["proxy_acc"] is None


def test_a_failed_candidate_keeps_the_end_of_its_error_and_shows_its_last_line(study):
    trial, asked = _asked(study, {"conv1": 0.5})
    written = asked.costed({"conv1": 8}, Cost(40, 8), feasible=True).write_attrs(trial)
    error = "x" * 3000 + "\nValueError: odd width  \n\n"
    failed = asked.costed({"conv1": 8}, Cost(40, 8), feasible=True).failed(error)
    failed.write_attrs(trial, written)
    frozen = study.tell(trial, state=FAIL)
    back = Candidate.from_trial(frozen, NAMES)
    assert back == replace(failed, ratios={**failed.ratios, "fc": None})  # fc: a group it holds no ratio for
    assert back.state == "fail" and back.error == error[-2000:] and len(back.error) == 2000
    assert back.seconds is None and back.proxy_acc is None
    assert back.row()["error"] == "ValueError: odd width"
    assert back.row()["ratio:fc"] is None


def _frozen(number, state, ratios=None, **attrs):
    ratios = ratios or {}
    trial = optuna.trial.create_trial(
        params=ratios, distributions={k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in ratios},
        value=0.5 if state == COMPLETE else None, user_attrs=attrs, state=state)
    trial.number = number
    return trial


def test_states_read_from_a_trial():
    assert Candidate.from_trial(_frozen(0, COMPLETE, feasible=False)).state == "infeasible"
    assert Candidate.from_trial(_frozen(0, COMPLETE)).state == "complete"  # older runs: no feasible attribute
    assert Candidate.from_trial(_frozen(0, FAIL, feasible=False)).state == "fail"
    running = _frozen(0, optuna.trial.TrialState.RUNNING)
    assert Candidate.from_trial(running).state == "running"


def test_a_trial_closed_before_its_ask_has_no_cost_and_no_ratios():
    c = Candidate.from_trial(_frozen(4, FAIL), ["g"])
    assert c.cost is None and c.ratios == {"g": None} and c.user_attrs() == {}
    assert c.row() == {**dict.fromkeys(TRIAL_COLUMNS), "number": 4, "state": "fail", "ratio:g": None}
    assert c.ratios_to_prune([Group("g", 0.1), Group("h", 0.0)]) == {"g": 0.1, "h": 0.0}


def test_ratios_without_group_names_are_the_trials_parameters():
    c = Candidate.from_trial(_frozen(2, COMPLETE, {"b": 0.25, "a": 0.75}, feasible=True, macs=3, params=1))
    assert c.ratios == {"b": 0.25, "a": 0.75} and c.id == "t0002"
    assert c.cost == Cost(3, 1, None)


def test_the_ratios_to_prune_are_those_it_was_scored_at():
    """A group whose grid has one point gets it without a parameter in the study (``suggest_ratios``): its
    lower bound, not zero, or the fine-tuned subnet would be wider than the candidate scored."""
    c = Candidate.from_trial(_frozen(2, COMPLETE, {"b": 0.25, "a": 0.0}, feasible=True), ["a", "b", "c"])
    ratios = c.ratios_to_prune([Group("c", 0.3), Group("a", 0.2), Group("b", 0.0)])
    assert ratios == {"c": 0.3, "a": 0.0, "b": 0.25} and list(ratios) == ["c", "a", "b"]
    assert [type(v) for v in ratios.values()] == [float] * 3


def test_trials_frame_is_trials_csv_of_the_study(tmp_path):
    study = optuna.create_study()
    study.add_trial(_frozen(0, COMPLETE, {"g": 0.25}, feasible=True, macs=3, params=1, proxy_acc=0.5, seconds=1.5,
                            draws=2))
    study.add_trial(_frozen(1, FAIL, {"g": 0.125}, feasible=True, macs=4, params=2, error="Trace\nE: x\n"))
    study.add_trial(_frozen(2, COMPLETE, {"g": 0.0}, feasible=False, macs=9, params=5, seconds=0.0012))
    study.add_trial(_frozen(3, PRUNED, {"g": 0.5}, feasible=True, macs=2, params=1, proxy_acc=0.25, scored_images=512))
    study.add_trial(_frozen(4, COMPLETE, {"g": 0.25}, feasible=True, macs=3, params=1, proxy_acc=0.5, seconds=0.5,
                            same_as=0))
    frame = trials_frame(study, ["g"])
    assert list(frame.columns) == [*TRIAL_COLUMNS, "ratio:g"]
    frame.to_csv(tmp_path / "trials.csv", index=False)
    assert (tmp_path / "trials.csv").read_text() == (
        "number,state,macs,params,proxy_acc,scored_images,seconds,prune_seconds,recalibrate_seconds,evaluate_seconds,"
        "draws,same_as,predicted_latency_ms,error,ratio:g\n"
        "0,complete,3,1,0.5,,1.5,,,,2.0,,,,0.25\n"
        "1,fail,4,2,,,,,,,,,,E: x,0.125\n"
        "2,infeasible,9,5,,,0.0012,,,,,,,,0.0\n"
        "3,stopped,2,1,0.25,512,,,,,,,,,0.5\n"
        "4,complete,3,1,0.5,,0.5,,,,,0,,,0.25\n")
    assert trials_frame(optuna.create_study(), ["g"]).columns.tolist() == [*TRIAL_COLUMNS, "ratio:g"]


def test_candidates_of_some_states_in_trial_order():
    study = optuna.create_study()
    for number, state in enumerate([FAIL, COMPLETE, COMPLETE]):
        study.add_trial(_frozen(number, state, {"g": number / 4}, feasible=True))
    assert [c.number for c in candidates(study, ["g"], states=(COMPLETE,))] == [1, 2]
    assert [c.ratios for c in candidates(study)] == [{"g": 0.0}, {"g": 0.25}, {"g": 0.5}]
