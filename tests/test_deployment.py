"""The verdict on a fine-tuned subnet: timed beside the baseline, and timed again where the machine was busy."""

from __future__ import annotations

from torch import nn

from autoprune.deployment import LatencySetup, time_subnet
from autoprune.measure.predictor import PredictorCheck
from autoprune.measure.target import TorchTarget
from autoprune.measure.timing import Timing


class Scripted(TorchTarget):
    """A target whose measurements are the given rounds, one measurement after another."""

    def __init__(self, measurements: list[dict[str, list[float]]]) -> None:
        super().__init__(threads=1)
        self.measurements = measurements
        self.count = 0

    def time(self, calls):
        rounds = self.measurements[self.count]
        self.count += 1
        return {name: rounds["base" if name == "" else "subnet"] for name in calls}


QUIET = {"base": [2.0, 2.0, 2.0], "subnet": [1.0, 1.05, 0.95]}  # 2.0x (1.90-2.11)
BUSY = {"base": [2.0, 2.0, 2.0], "subnet": [1.0, 1.6, 1.4]}  # 1.43x (1.25-2.00)


def _verdict(measurements):
    target = Scripted(measurements)
    setup = LatencySetup(target, lambda: None, Timing(2.0, 2.0, 2.0, 3), None, 0.0, 1.0, [], PredictorCheck(), 0.0)
    measured = time_subnet(setup, nn.Linear(2, 2), (2,), "t0001", 0.9, 100)
    return target.count, measured


def test_a_quiet_verdict_is_measured_once():
    count, measured = _verdict([QUIET, BUSY])
    assert count == 1 and measured.speedup == 2.0 and (measured.predicted_ms, measured.macs) == (0.9, 100)


def test_a_verdict_spread_wide_is_timed_again_and_the_narrower_kept():
    count, measured = _verdict([BUSY, QUIET])
    assert count == 2 and measured.speedup == 2.0 and measured.ms == 1.0
    count, measured = _verdict([BUSY, BUSY])
    assert count == 2 and round(measured.speedup, 2) == 1.43  # no third time


def test_a_share_of_latency_is_judged_by_the_paired_speedup_and_a_ceiling_in_ms_by_the_ms(subnet_spec):
    from autoprune.budget import parse_budget
    from autoprune.measure.cost import Cost
    from autoprune.report import latency_verdicts

    base = Cost(macs=1000, params=100, latency_ms=10.0)
    # measured when the machine ran slower than at set-up: 5.5 ms, but 2.05x the unpruned model beside it
    fast = subnet_spec(id="t0001", latency_ms=5.5, speedup=2.05, speedup_spread=[1.95, 2.1])
    slow = subnet_spec(id="t0002", latency_ms=4.9, speedup=1.9, speedup_spread=[1.8, 2.0])
    (a, b) = latency_verdicts([fast, slow], parse_budget("50%latency"), base)
    assert a == (fast, "2.05x (1.95-2.10) measured beside the unpruned model against the 2.00x that 50%latency asks",
                 True)
    assert b[2] is False
    (c, d) = latency_verdicts([fast, slow], parse_budget("5ms"), base)
    assert c == (fast, "5.500 ms measured against 5.000 ms", False) and d[2] is True
    assert latency_verdicts([fast], parse_budget("50%flops"), base) == []


def test_the_set_up_says_where_no_efficient_widths_were_kept():
    from autoprune.measure.predictor import Measured

    rounding = Measured("8", None, 1.0, 0.9, 1.1, 1.5, 1.4, 1.6)
    setup = LatencySetup(TorchTarget(threads=1), lambda: None, Timing(2.0, 2.0, 2.0, 3), None, 0.0, 1.0, [],
                         PredictorCheck(), 0.0, None, [rounding])
    assert any(line.startswith("efficient widths: none kept") for line in setup.describe())
    setup.roundings = []  # --widths all: nothing looked for, nothing said
    assert not any("efficient widths" in line for line in setup.describe())


def test_the_set_up_says_why_it_kept_a_rounding_other_than_the_fastest():
    from autoprune.measure.predictor import Measured

    roundings = [Measured(str(m), None, ms, ms, ms, 2.0 / ms, 2.0 / ms, 2.0 / ms)
                 for m, ms in ((1, 1.5), (4, 1.3), (8, 1.0), (16, 1.04))]  # 8 fastest; 16 within 5% but wider

    def line(multiple):
        setup = LatencySetup(TorchTarget(threads=1), lambda: None, Timing(2.0, 2.0, 2.0, 3), {"g": [8, 16]}, 0.0, 1.0,
                             [], PredictorCheck(), 0.0, multiple, roundings)
        return next(text for text in setup.describe() if text.startswith("efficient widths"))

    assert "multiples of 8 channels (the fastest rounding measured), 2 kept over 1 groups" in line(8)
    assert ("multiples of 1 channels (multiples of 8 ran fastest, but their narrowest subnet leaves the budget no "
            "room)") in line(1)
