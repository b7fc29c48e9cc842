"""The settings of candidate scoring (EagleEye adaptive BN) and of latency measurement."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.errors import UserError
from autoprune.settings import BENCH, SEARCH, setting


@dataclass(frozen=True)
class ScoringSettings:
    """A candidate's score: its BatchNorm statistics recalibrated on ``calib_batches`` training batches (off
    with ``adaptive_bn=False``), then its accuracy on the first ``score_images`` held-out training images;
    latency is predicted and measured at batch ``latency_batch``."""

    calib_batches: int = setting(20, "training batches for adaptive-BN recalibration", identity=True,
                                 commands=(SEARCH, BENCH))
    score_images: int = setting(2000, "held-out images used to score a candidate", identity=True,
                                commands=(SEARCH, BENCH))
    adaptive_bn: bool = setting(True, "score without recalibrating BN (for comparison)", identity=True)
    latency_batch: int = setting(1, "batch size at which latency is predicted and measured, on --device",
                                 identity=True)

    def check_scoring(self) -> None:
        """The scoring settings' own checks; raises ``UserError`` on the first that fails."""
        for option, value in (("--calib-batches", self.calib_batches), ("--score-images", self.score_images),
                              ("--latency-batch", self.latency_batch)):
            if value < 1:
                raise UserError(f"{option} must be at least 1")
