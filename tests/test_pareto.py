"""The Pareto front: ``autoprune.pareto.non_dominated`` and the report's fronts built on it.

The convention, from the docstrings: an item is dropped only if another item is at least as good on
both accuracy (higher) and cost (lower) and strictly better on one. Equal points do not beat each
other, so duplicates all stay. The front is sorted cheapest first by a stable sort: items of equal
cost (on a front they are duplicates) keep their input order.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.pareto import non_dominated
from autoprune.report import pareto_front, pareto_subnets
from autoprune.results import SubnetSpec


class P:
    """A point with an identity: duplicates are told apart by ``is``."""

    def __init__(self, name: str, acc: float, cost: float) -> None:
        self.name, self.acc, self.cost = name, acc, cost

    def __repr__(self) -> str:
        return f"P({self.name!r}, {self.acc}, {self.cost})"


def front(points):
    return non_dominated(points, lambda p: p.acc, lambda p: p.cost)


def names(points):
    return [p.name for p in points]


# --- non_dominated, fronts written by hand ---------------------------------------------------


def test_empty_input_has_an_empty_front():
    assert front([]) == []


def test_a_single_item_is_its_own_front():
    only = P("a", 0.5, 10)
    assert front([only]) == [only]


def test_a_dominated_point_is_left_out_and_the_rest_come_cheapest_first():
    points = [P("mid", 0.80, 20), P("beaten", 0.70, 25), P("cheap", 0.60, 10), P("best", 0.90, 40)]
    assert names(front(points)) == ["cheap", "mid", "best"]


def test_a_point_beaten_on_both_by_several_is_left_out():
    points = [P("worst", 0.1, 100), P("a", 0.5, 50), P("b", 0.6, 60)]
    assert names(front(points)) == ["a", "b"]


def test_equal_cost_keeps_only_the_more_accurate():
    points = [P("low", 0.70, 10), P("high", 0.75, 10), P("other", 0.80, 30)]
    assert names(front(points)) == ["high", "other"]


def test_equal_accuracy_keeps_only_the_cheaper():
    points = [P("dear", 0.70, 30), P("cheap", 0.70, 10), P("other", 0.60, 5)]
    assert names(front(points)) == ["other", "cheap"]


def test_duplicates_do_not_beat_each_other_and_keep_their_input_order():
    first, second = P("first", 0.7, 10), P("second", 0.7, 10)
    third = P("third", 0.9, 20)
    result = front([third, first, second])
    assert result == [first, second, third]
    assert result[0] is first and result[1] is second


def test_duplicates_of_a_dominated_point_all_go():
    points = [P("d1", 0.5, 20), P("d2", 0.5, 20), P("top", 0.6, 10)]
    assert names(front(points)) == ["top"]


def test_one_point_beating_every_other_is_the_whole_front():
    points = [P(str(i), 0.1 * i, 10 + i) for i in range(5)] + [P("king", 0.99, 1)]
    assert names(front(points)) == ["king"]


def test_a_staircase_is_kept_whole_in_cost_order():
    points = [P(str(c), c / 10, c) for c in (5, 1, 4, 2, 3)]
    assert names(front(points)) == ["1", "2", "3", "4", "5"]


def test_the_front_is_a_new_list_and_the_input_is_untouched():
    points = [P("b", 0.9, 20), P("a", 0.5, 10)]
    before = list(points)
    result = front(points)
    assert points == before
    assert result is not points and result == [points[1], points[0]]


def test_float_accuracy_differences_count():
    points = [P("a", 0.1 + 0.2, 10), P("b", 0.3, 10)]  # 0.30000000000000004 > 0.3
    assert names(front(points)) == ["a"]


# --- non_dominated against the definition, on random points ------------------------------------


def _dominates(o: P, p: P) -> bool:
    return o.acc >= p.acc and o.cost <= p.cost and (o.acc > p.acc or o.cost < p.cost)


# small integer ranges give many ties and duplicates
_points = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=25).map(
    lambda pairs: [P(str(i), acc, cost) for i, (acc, cost) in enumerate(pairs)])


@settings(max_examples=300, deadline=None)
@given(_points)
def test_front_is_the_brute_force_non_dominated_set(points):
    result = front(points)
    expected = [p for p in points if not any(_dominates(o, p) for o in points)]
    # the same items (by identity, duplicates included), each once
    assert sorted(map(id, result)) == sorted(map(id, expected))
    assert len({id(p) for p in result}) == len(result)
    # cheapest first; equal costs in input order
    position = {id(p): i for i, p in enumerate(points)}
    assert [(p.cost, position[id(p)]) for p in result] == sorted((p.cost, position[id(p)]) for p in result)
    # along the front, a dearer point is strictly more accurate; equal cost means equal accuracy
    for a, b in itertools.pairwise(result):
        assert (a.cost < b.cost and a.acc < b.acc) or (a.cost == b.cost and a.acc == b.acc)
    # every point left out is beaten by a point on the front
    kept = {id(p) for p in result}
    assert all(any(_dominates(f, p) for f in result) for p in points if id(p) not in kept)


@settings(max_examples=100, deadline=None)
# allow_subnormal=False: a library built with fast-math, loaded earlier in the same process (an xdist
# worker), can flush subnormal floats, and hypothesis then refuses to draw any.
@given(st.lists(st.tuples(st.floats(0, 1, allow_subnormal=False), st.floats(0, 1e9, allow_subnormal=False)), max_size=20))
def test_front_of_float_points_matches_the_definition(pairs):
    points = [P(str(i), acc, cost) for i, (acc, cost) in enumerate(pairs)]
    result = front(points)
    expected = [p for p in points if not any(_dominates(o, p) for o in points)]
    assert sorted(map(id, result)) == sorted(map(id, expected))
    assert [p.cost for p in result] == sorted(p.cost for p in result)


# --- the report's fronts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record(subnet_spec):
    def make(id_: str, test_acc: float, macs: int = 100, proxy_acc: float = 0.5, params: int = 1000,
             **fields) -> SubnetSpec:
        return subnet_spec(id=id_, test_acc=test_acc, macs=macs, proxy_acc=proxy_acc, params=params,
                           holdout_acc=proxy_acc, path=f"subnets/{id_}", **fields)

    return make


def test_pareto_front_ranks_subnets_on_test_accuracy_and_macs(record):
    # proxy accuracy and params point the other way: only test accuracy and MACs count
    records = [
        record("t1", test_acc=0.90, macs=200, proxy_acc=0.1, params=10),
        record("t2", test_acc=0.85, macs=250, proxy_acc=0.9, params=1),
        record("t3", test_acc=0.80, macs=100, proxy_acc=0.2, params=99),
        record("t4", test_acc=0.80, macs=100, proxy_acc=0.3, params=50),
    ]
    result = pareto_front(records)
    assert [r.id for r in result] == ["t3", "t4", "t1"]
    assert result[0] is records[2] and result[1] is records[3]


def test_pareto_front_of_nothing_and_of_one(record):
    assert pareto_front([]) == []
    one = record("t0", 0.5, 10)
    assert pareto_front([one]) == [one]


def test_pareto_front_does_not_put_every_subnet_on_it(record):
    records = [record(f"t{i}", test_acc=0.5 + i / 100, macs=100 - i) for i in range(5)]
    assert [r.id for r in pareto_front(records)] == ["t4"]


def _three(record):
    return [record("a", 0.9, macs=300, latency_ms=9.0), record("b", 0.8, macs=100, latency_ms=1.0),
            record("c", 0.7, macs=200, latency_ms=0.5)]


def test_pareto_subnets_on_macs(record):
    assert [s.id for s in pareto_subnets(_three(record), "macs")] == ["b", "a"]


def test_pareto_subnets_on_latency_is_another_front(record):
    assert [s.id for s in pareto_subnets(_three(record), "latency_ms")] == ["c", "b", "a"]


def test_pareto_subnets_leave_out_those_without_the_cost(record):
    subnets = [
        record("none", 0.99, latency_ms=None),
        record("nan", 0.99, latency_ms=math.nan),  # a spec from before latencies were measured loads so
        record("dear", 0.6, latency_ms=5.0),
        record("cheap", 0.5, latency_ms=2.0),
        record("beaten", 0.4, latency_ms=3.0),
    ]
    assert [s.id for s in pareto_subnets(subnets, "latency_ms")] == ["cheap", "dear"]
    assert pareto_subnets(subnets[:2], "latency_ms") == []
    assert pareto_subnets([], "macs") == []


def test_pareto_subnets_keep_duplicates_in_input_order(record):
    subnets = [record("x", 0.7, macs=10), record("y", 0.7, macs=10), record("z", 0.6, macs=10)]
    result = pareto_subnets(subnets, "macs")
    assert [s.id for s in result] == ["x", "y"]
    assert result[0] is subnets[0]


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.just(math.nan), st.integers(0, 5))),
                      max_size=15))
def test_pareto_subnets_are_the_front_of_those_with_the_cost(record, pairs):
    subnets = [record(str(i), acc, macs=cost) for i, (acc, cost) in enumerate(pairs)]
    with_cost = [s for s in subnets if s.macs is not None and not (isinstance(s.macs, float) and math.isnan(s.macs))]
    expected = [s for s in with_cost if not any(
        o.test_acc >= s.test_acc and o.macs <= s.macs and (o.test_acc > s.test_acc or o.macs < s.macs)
        for o in with_cost)]
    expected.sort(key=lambda s: s.macs)
    assert pareto_subnets(subnets, "macs") == expected
