"""Budgets on generated text and costs (hypothesis).

What the README and ``autoprune.budget`` promise: ``N%flops``/``N%macs`` is the same fraction of the
baseline's MACs, ``N%params`` of its params and ``N%latency`` of its measured latency; ``N[k|M|G]MACs``
is absolute, ``N[k|M|G]FLOPs`` half that in MACs (FLOPs = 2 x MACs); ``Nms`` is a latency; parts are
joined by commas, in any case and with any spacing. Malformed or impossible text is a ``UserError``,
never another exception. A cost is feasible iff it is within *every* constraint.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autoprune.budget import Budget, parse_budget
from autoprune.errors import UserError
from autoprune.pruning.space import Cost

PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
SPACES = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def any_case(draw, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if up else c.lower() for c, up in zip(word, flips))


@st.composite
def number(draw, max_int: int = 10**6) -> str:
    """A decimal the budget grammar accepts: digits, optionally a point and more digits."""
    whole = draw(st.integers(0, max_int))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=4)))
    return f"{whole}.{fraction}" if fraction else str(whole)


# --- one part of a budget: (text, metric, fraction, absolute) --------------------------------


@st.composite
def relative(draw, metric: str | None = None) -> tuple[str, str, float, None]:
    """``N%word``: a percentage strictly between 0 and 100 of one metric."""
    num = draw(number(max_int=99))
    assume(0 < float(num) < 100)
    word = draw(st.sampled_from({"macs": ["flops", "macs"], "params": ["params"],
                                 "latency_ms": ["latency"]}[metric] if metric else
                                ["flops", "macs", "params", "latency"]))
    text = f"{num}{draw(SPACES)}%{draw(SPACES)}{draw(any_case(word))}"
    expected = {"flops": "macs", "macs": "macs", "params": "params", "latency": "latency_ms"}[word]
    return text, expected, float(num) / 100, None


@st.composite
def absolute(draw, metric: str | None = None) -> tuple[str, str, None, float]:
    """``N[k|M|G]word``: an absolute count of MACs (FLOPs halved) or params."""
    num = draw(number())
    assume(float(num) > 0)
    word = draw(st.sampled_from({"macs": ["flops", "macs"], "params": ["params"]}[metric] if metric else
                                ["flops", "macs", "params"]))
    prefix = draw(st.sampled_from(sorted(PREFIX)))
    text = f"{num}{draw(SPACES)}{draw(any_case(prefix))}{draw(SPACES)}{draw(any_case(word))}"
    value = float(num) * PREFIX[prefix]
    return text, "params" if word == "params" else "macs", None, value / 2 if word == "flops" else value


@st.composite
def milliseconds(draw) -> tuple[str, str, None, float]:
    num = draw(number(max_int=10**4))
    assume(float(num) > 0)
    return f"{num}{draw(SPACES)}{draw(any_case('ms'))}", "latency_ms", None, float(num)


def part_of(metric: str):
    """A part constraining ``metric`` in any of the forms the grammar has for it."""
    if metric == "latency_ms":
        return st.one_of(relative("latency_ms"), milliseconds())
    return st.one_of(relative(metric), absolute(metric))


@st.composite
def joined(draw) -> tuple[str, list[tuple[str, str, float | None, float | None]]]:
    """1 to 3 parts on distinct metrics, in any order, joined by commas with spaces (and empty parts)."""
    metrics = draw(st.permutations(["macs", "params", "latency_ms"]))[: draw(st.integers(1, 3))]
    parts = [draw(part_of(m)) for m in metrics]
    text = draw(SPACES)
    for i, part in enumerate(parts):
        if i:
            text += draw(SPACES) + "," + draw(st.sampled_from(["", " ", " , "])) + draw(SPACES)
        text += part[0]
    text += draw(st.sampled_from(["", " ", ",", ", "]))
    return text, parts


# --- parsing -------------------------------------------------------------------------------


def _check(constraint, text, metric, fraction, absolute_value):
    assert constraint.text == text.strip()
    assert constraint.metric == metric
    assert constraint.fraction == fraction
    assert constraint.absolute == absolute_value


@settings(max_examples=200, deadline=None)
@given(st.one_of(relative(), absolute(), milliseconds()))
def test_one_part_parses_to_its_metric_and_value(part):
    text, metric, fraction, absolute_value = part
    budget = parse_budget(text)
    (constraint,) = budget.constraints
    _check(constraint, text, metric, fraction, absolute_value)
    assert budget.text == text.strip()
    assert budget.needs_latency == (metric == "latency_ms")


@settings(max_examples=150, deadline=None)
@given(joined())
def test_joined_parts_parse_in_order(case):
    text, parts = case
    budget = parse_budget(text)
    assert len(budget.constraints) == len(parts)
    for constraint, (part, metric, fraction, absolute_value) in zip(budget.constraints, parts):
        _check(constraint, part, metric, fraction, absolute_value)
    assert budget.text == ",".join(part[0].strip() for part in parts)
    assert budget.primary is budget.constraints[0]
    assert budget.needs_latency == any(p[1] == "latency_ms" for p in parts)


@settings(max_examples=100, deadline=None)
@given(number(), st.sampled_from(sorted(PREFIX)))
def test_flops_are_twice_macs(num, prefix):
    assume(float(num) > 0)
    flops = parse_budget(f"{num}{prefix}FLOPs").primary
    macs = parse_budget(f"{num}{prefix}MACs").primary
    assert flops.metric == macs.metric == "macs"
    assert flops.absolute * 2 == macs.absolute == float(num) * PREFIX[prefix]
    base = Cost(macs=10**9, params=10**6)
    assert flops.limit(base) * 2 == macs.limit(base)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 99))
def test_a_percentage_of_flops_is_the_same_percentage_of_macs(percent):
    flops, macs = parse_budget(f"{percent}%flops").primary, parse_budget(f"{percent}%MACs").primary
    base = Cost(macs=123_456_789, params=1)
    assert flops.metric == macs.metric == "macs"
    assert flops.fraction == macs.fraction == percent / 100
    assert flops.limit(base) == macs.limit(base) == percent / 100 * 123_456_789


# --- malformed and out-of-range text -------------------------------------------------------


def _parses_or_user_error(text: str) -> Budget | None:
    try:
        return parse_budget(text)
    except UserError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_parses_or_is_a_user_error(text):
    _parses_or_user_error(text)


# the characters of the grammar, their look-alikes (long s, Kelvin sign, full-width digits) and junk
GRAMMAR_ALPHABET = "0123456789.%, \tkKmMgGflopsFLOPSacACrRtTenNyY-+e\u017f\u212a\uff15\u0665"


@settings(max_examples=500, deadline=None)
@given(st.text(GRAMMAR_ALPHABET, max_size=14))
def test_text_near_the_grammar_parses_or_is_a_user_error(text):
    budget = _parses_or_user_error(text)
    if budget is not None:  # what parses is one of the forms, in ASCII
        assert text.isascii()
        for c in budget.constraints:
            assert c.metric in ("macs", "params", "latency_ms")
            assert (c.fraction is None) != (c.absolute is None)
            assert 0 < (c.fraction if c.fraction is not None else c.absolute) < math.inf
            assert c.fraction is None or c.fraction < 1


@pytest.mark.parametrize("text", [
    "5m\u017f",           # 'ms' with a long s, which matches 's' case-insensitively
    "50%param\u017f",     # a long s: not 'params'
    "10Mflop\u017f",
    "10\u212aflops",      # the Kelvin sign is no 'k'
    "\uff15\uff10%flops",  # full-width digits
    "\u0665ms",           # an Arabic-Indic digit
])
def test_look_alike_characters_are_user_errors(text):
    with pytest.raises(UserError, match="not understood"):
        parse_budget(text)


def test_a_budget_too_large_for_a_float_is_a_user_error():
    with pytest.raises(UserError, match="too large"):
        parse_budget("1" + "0" * 400 + "MMACs")
    with pytest.raises(UserError, match="too large"):
        parse_budget("1" + "0" * 400 + "ms")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.integers(100, 10**6).map(str), number().filter(lambda n: float(n) >= 100),
                 st.sampled_from(["0", "0.0", "00", "0.000"])),
       st.sampled_from(["flops", "macs", "params", "latency"]))
def test_a_percentage_out_of_range_is_a_user_error(num, word):
    with pytest.raises(UserError, match="above 0 and below 100"):
        parse_budget(f"{num}%{word}")


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["0", "0.0", "00", "0.000"]), st.sampled_from(["", "k", "M", "G"]),
       st.sampled_from(["flops", "macs", "params"]))
def test_a_zero_count_is_a_user_error(num, prefix, word):
    with pytest.raises(UserError, match="positive"):
        parse_budget(f"{num}{prefix}{word}")
    with pytest.raises(UserError, match="positive"):
        parse_budget(f"{num}ms")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["macs", "params", "latency_ms"]).flatmap(lambda m: st.tuples(part_of(m), part_of(m))),
       SPACES)
def test_the_same_metric_twice_is_a_user_error(parts, space):
    with pytest.raises(UserError, match="same metric twice"):
        parse_budget(f"{parts[0][0]}{space},{parts[1][0]}")


@settings(max_examples=100, deadline=None)
@given(number(), st.sampled_from(["-", "+", "%%", "e5", "x"]), st.sampled_from(["%flops", "MMACs", "ms", "params"]))
def test_signs_exponents_and_junk_are_user_errors(num, junk, unit):
    for text in (f"{junk}{num}{unit}", f"{num}{junk}{unit}"):
        with pytest.raises(UserError):
            parse_budget(text)


@settings(max_examples=100, deadline=None)
@given(number(), st.sampled_from(["watts", "flop", "mac", "param", "s", "us", "%", "%ms", "Tflops", "bytes", ""]))
def test_unknown_units_are_user_errors(num, unit):
    with pytest.raises(UserError, match="not understood"):
        parse_budget(f"{num}{unit}")


@pytest.mark.parametrize("text", ["", " ", ",", " , ,", "\t"])
def test_an_empty_budget_is_a_user_error(text):
    with pytest.raises(UserError, match="empty"):
        parse_budget(text)


# --- feasibility: every constraint, at and around its limit ---------------------------------

BASES = st.builds(Cost, macs=st.integers(10**3, 10**9), params=st.integers(10**2, 10**8),
                  latency_ms=st.floats(0.1, 100, allow_subnormal=False))


@st.composite
def limit_text(draw, metric: str) -> str:
    """A constraint on ``metric``: a whole percentage of the baseline or an absolute value."""
    if draw(st.booleans()):
        word = {"macs": draw(st.sampled_from(["flops", "macs"])), "params": "params", "latency_ms": "latency"}[metric]
        return f"{draw(st.integers(1, 99))}%{word}"
    if metric == "latency_ms":
        return f"{draw(st.integers(1, 10**4)) / 100}ms"
    word = "params" if metric == "params" else draw(st.sampled_from(["macs", "flops"]))
    return f"{draw(st.integers(1, 10**9))}{word}"


@st.composite
def value_near(draw, limit: float, metric: str, within: bool) -> int | float:
    """A cost at, under or just over ``limit``: integers for MACs and params, a float for latency."""
    if metric == "latency_ms":
        if within:
            return limit * draw(st.sampled_from([1.0, 0.999999, 0.5, 0.0]))
        return limit * draw(st.sampled_from([1.000001, 1.001, 2.0]))
    if within:  # the largest whole count within the limit, or a bit less; never negative
        return max(0, math.floor(limit) - draw(st.sampled_from([0, 0, 1, 2, 10**3])))
    # over by at least one whole count: 29%params of 100 is 28.999999999999996 in floats, and 29 is within it
    return math.floor(limit * (1 + 1e-9)) + draw(st.sampled_from([1, 1, 2, 10**3]))


# allow_subnormal=False: a library built with fast-math, loaded earlier in the same process (an xdist
# worker), can flush subnormal floats, and hypothesis then refuses to draw any.
@st.composite
def budget_and_cost(draw) -> tuple[Budget, Cost, Cost, list[bool]]:
    """A budget of 1-3 constraints, a base, and a cost within or over each limit (chosen per constraint)."""
    base = draw(BASES)
    metrics = draw(st.permutations(["macs", "params", "latency_ms"]))[: draw(st.integers(1, 3))]
    budget = parse_budget(",".join(draw(limit_text(m)) for m in metrics))
    within = [draw(st.booleans()) for _ in metrics]
    values = {"macs": draw(st.integers(0, 10**10)), "params": draw(st.integers(0, 10**10)),
              "latency_ms": draw(st.floats(0, 1e4, allow_subnormal=False))}  # metrics the budget leaves free: anything
    for c, ok in zip(budget.constraints, within):
        values[c.metric] = draw(value_near(c.limit(base), c.metric, ok))
    return budget, Cost(**values), base, within


@settings(max_examples=300, deadline=None)
@given(budget_and_cost())
def test_feasible_iff_every_constraint_holds(case):
    budget, cost, base, within = case
    assert budget.feasible(cost, base) == all(within)
    violations = budget.violations(cost, base)
    assert list(violations) == [c.text for c in budget.constraints]
    for c, ok in zip(budget.constraints, within):
        assert (violations[c.text] <= 0) == ok
        assert (getattr(cost, c.metric) <= c.limit(base)) == ok


@st.composite
def one_broken_after_the_first(draw) -> tuple[Budget, Cost, Cost, int]:
    """A budget of 2-3 constraints and a cost within every one but the second or the third."""
    base = draw(BASES)
    metrics = draw(st.permutations(["macs", "params", "latency_ms"]))[: draw(st.integers(2, 3))]
    budget = parse_budget(",".join(draw(limit_text(m)) for m in metrics))
    broken = draw(st.integers(1, len(metrics) - 1))
    values = {}
    for i, c in enumerate(budget.constraints):
        values[c.metric] = draw(value_near(c.limit(base), c.metric, within=i != broken))
    values.setdefault("macs", 0)
    values.setdefault("params", 0)
    return budget, Cost(**values), base, broken


@settings(max_examples=200, deadline=None)
@given(one_broken_after_the_first())
def test_a_cost_over_only_a_later_constraint_is_infeasible(case):
    budget, cost, base, broken = case
    assert not budget.feasible(cost, base)
    over = [text for text, v in budget.violations(cost, base).items() if v > 0]
    assert over == [budget.constraints[broken].text]
