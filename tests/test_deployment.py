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
