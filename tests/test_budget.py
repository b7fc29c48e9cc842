import pytest

from autoprune.budget import parse_budget
from autoprune.errors import UserError
from autoprune.pruning.space import Cost

BASE = Cost(macs=100_000_000, params=4_000_000)


@pytest.mark.parametrize("text", ["50%flops", "50%macs", "50 % FLOPs", "50%MACs"])
def test_percentage_of_flops_or_macs_is_a_macs_fraction(text):
    (constraint,) = parse_budget(text).constraints
    assert constraint.metric == "macs"
    assert constraint.fraction == pytest.approx(0.5)
    assert constraint.absolute is None
    assert constraint.limit(BASE) == pytest.approx(50_000_000)


def test_percentage_of_params():
    (constraint,) = parse_budget("40%params").constraints
    assert constraint.metric == "params"
    assert constraint.fraction == pytest.approx(0.4)
    assert constraint.limit(BASE) == pytest.approx(1_600_000)


@pytest.mark.parametrize(
    "text, metric, absolute",
    [
        ("60MMACs", "macs", 6e7),
        ("120MFLOPs", "macs", 6e7),
        ("1.5GFLOPs", "macs", 7.5e8),
        ("500kmacs", "macs", 5e5),
        ("2.5Mparams", "params", 2.5e6),
    ],
)
def test_absolute_budgets_count_macs_with_flops_twice_macs(text, metric, absolute):
    (constraint,) = parse_budget(text).constraints
    assert constraint.metric == metric
    assert constraint.fraction is None
    assert constraint.absolute == pytest.approx(absolute)
    assert constraint.limit(BASE) == pytest.approx(absolute)


def test_absolute_limit_does_not_depend_on_the_base():
    constraint = parse_budget("60MMACs").primary
    assert constraint.limit(Cost(1, 1)) == constraint.limit(BASE) == pytest.approx(6e7)


def test_violation_is_value_over_limit_minus_one():
    budget = parse_budget("50%flops")
    assert budget.violations(Cost(75_000_000, 1), BASE) == {"50%flops": pytest.approx(0.5)}
    assert budget.violations(Cost(25_000_000, 1), BASE) == {"50%flops": pytest.approx(-0.5)}


def test_share_is_the_largest_value_over_its_limit():
    budget = parse_budget("50%flops, 40%params")
    assert budget.share(Cost(45_000_000, 800_000), BASE) == pytest.approx(0.9)  # MACs 0.9, params 0.5
    assert budget.share(Cost(10_000_000, 1_600_000), BASE) == pytest.approx(1.0)  # params at their limit
    assert budget.share(Cost(75_000_000, 3_200_000), BASE) == pytest.approx(2.0)  # params twice theirs


def test_joined_budget_honours_every_constraint():
    budget = parse_budget("50%flops, 40%params")
    assert [c.metric for c in budget.constraints] == ["macs", "params"]
    assert budget.primary.metric == "macs"
    assert budget.text == "50%flops,40%params"

    assert budget.feasible(Cost(50_000_000, 1_600_000), BASE)
    assert budget.feasible(Cost(10_000_000, 100_000), BASE)

    over_macs = Cost(50_000_001, 1_000_000)
    assert not budget.feasible(over_macs, BASE)
    v = budget.violations(over_macs, BASE)
    assert v["50%flops"] == pytest.approx(2e-8)
    assert v["40%params"] == pytest.approx(-0.375)

    over_params = Cost(10_000_000, 2_000_000)
    assert not budget.feasible(over_params, BASE)
    v = budget.violations(over_params, BASE)
    assert v["50%flops"] == pytest.approx(-0.8)
    assert v["40%params"] == pytest.approx(0.25)


def test_mixed_relative_and_absolute_budget():
    budget = parse_budget("60MMACs,2.5Mparams")
    assert budget.feasible(Cost(60_000_000, 2_500_000), BASE)
    assert not budget.feasible(Cost(60_000_000, 2_500_001), BASE)
    assert not budget.feasible(Cost(60_000_100, 2_000_000), BASE)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("150%flops", "below 100"),
        ("100%params", "below 100"),
        ("0%flops", "above 0"),
        ("0MMACs", "positive"),
        ("abc", "not understood"),
        ("50%watts", "not understood"),
        ("", "empty"),
        (" , ", "empty"),
        ("50%flops,60%flops", "same metric twice"),
        ("50%flops,60MMACs", "same metric twice"),
        ("0ms", "positive"),
    ],
)
def test_bad_budgets_are_user_errors(text, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_budget(text)


@pytest.mark.parametrize("text, ms", [("8ms", 8.0), ("0.8ms", 0.8), ("2.5 ms", 2.5)])
def test_latency_budget_in_milliseconds(text, ms):
    (constraint,) = parse_budget(text).constraints
    assert constraint.metric == "latency_ms" and constraint.limit(BASE) == pytest.approx(ms)
    assert parse_budget(text).needs_latency


def test_latency_joined_with_flops_each_honoured():
    budget = parse_budget("50%flops,10ms")
    base = Cost(macs=100, params=10, latency_ms=20.0)
    assert budget.feasible(Cost(macs=50, params=10, latency_ms=9.5), base)
    assert not budget.feasible(Cost(macs=50, params=10, latency_ms=10.5), base)
    assert not budget.feasible(Cost(macs=51, params=10, latency_ms=5.0), base)


def test_latency_budget_relative_to_the_measured_baseline():
    budget = parse_budget("60%latency")
    assert budget.needs_latency
    assert budget.primary.limit(Cost(macs=1, params=1, latency_ms=20.0)) == pytest.approx(12.0)


def test_loose_constraints_are_those_the_unpruned_model_meets():
    base = Cost(macs=15e6, params=200e3, latency_ms=4.0)
    budget = parse_budget("60MMACs,50%params,4ms")
    assert [c.text for c in budget.loose(base)] == ["60MMACs", "4ms"]  # a limit equal to the baseline's value too
    assert parse_budget("14.9MMACs,0.3Mparams").loose(base) == [parse_budget("0.3Mparams").primary]
    assert parse_budget("50%flops,40%params").loose(base) == []


def test_all_of_holds_where_every_budget_holds_and_fills_the_tightest_share_first():
    from autoprune.budget import all_of

    base = Cost(macs=1000, params=100, latency_ms=10.0)
    budgets = [parse_budget("50%latency"), parse_budget("30%flops,60%params"), parse_budget("20%flops"),
               parse_budget("150MMACs")]
    every = all_of(budgets)
    assert every.primary.text == "20%flops"
    assert [c.text for c in every.constraints] == ["20%flops", "30%flops", "50%latency", "60%params", "150MMACs"]
    for cost in (Cost(200, 60, 5.0), Cost(201, 60, 5.0), Cost(200, 61, 5.0), Cost(200, 60, 5.1), Cost(100, 10, 1.0)):
        assert every.feasible(cost, base) == all(b.feasible(cost, base) for b in budgets), cost
    assert every.feasible(Cost(200, 60, 5.0), base) and not every.feasible(Cost(201, 60, 5.0), base)
