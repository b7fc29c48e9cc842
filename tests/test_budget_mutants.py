"""Budget edges the mutation run (make mutate) found untested: how a budget describes itself, the ends of
the ranges it accepts, and the name each constraint reports its violation under."""

from __future__ import annotations

import pytest

from autoprune.budget import parse_budget
from autoprune.errors import UserError
from autoprune.pruning.space import Cost

BASE = Cost(macs=100_000_000, params=4_000_000, latency_ms=20.0)


def test_describe_names_each_limit_and_its_share_of_the_baseline():
    assert parse_budget("50%flops, 3Mparams, 8ms").describe(BASE) == (
        "50%flops (<= 50.000M MACs, 50.0% of baseline), 3Mparams (<= 3.000M params, 75.0% of baseline), "
        "8ms (<= 8.000 ms predicted, 40.0% of baseline)")
    assert parse_budget("4GMACs,25%latency").describe(BASE) == (
        "4GMACs (<= 4000.000M MACs, 4000.0% of baseline), 25%latency (<= 5.000 ms predicted, 25.0% of baseline)")


def test_the_smallest_budgets_accepted():
    assert parse_budget("1%flops").primary.fraction == 0.01
    assert parse_budget("0.5%params").primary.fraction == 0.005
    assert parse_budget("99.9%macs").primary.fraction == pytest.approx(0.999)
    assert parse_budget("1macs").primary.absolute == 1.0
    assert parse_budget("1flops").primary.absolute == 0.5
    assert parse_budget("0.5ms").primary.absolute == 0.5
    with pytest.raises(UserError, match="above 0 and below 100"):
        parse_budget("100%latency")


def test_each_violation_is_reported_under_its_own_text():
    budget = parse_budget("50%flops,8ms, 2Mparams")
    assert [c.text for c in budget.constraints] == ["50%flops", "8ms", "2Mparams"]
    assert budget.violations(Cost(25_000_000, 3_000_000, 10.0), BASE) == {
        "50%flops": -0.5, "8ms": 0.25, "2Mparams": 0.5}
    assert budget.text == "50%flops,8ms,2Mparams"
    assert not budget.feasible(Cost(25_000_000, 1_000_000, 10.0), BASE)
    assert budget.feasible(Cost(50_000_000, 2_000_000, 8.0), BASE)  # at every limit exactly


@pytest.mark.parametrize("text", ["0MMACs", "0.0flops", "0ms"])
def test_a_zero_budget_is_quoted_in_its_error(text):
    with pytest.raises(UserError) as error:
        parse_budget(text)
    assert str(error.value) == f"budget '{text}' must be positive"
