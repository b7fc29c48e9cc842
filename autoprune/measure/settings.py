"""The settings of candidate scoring (EagleEye adaptive BN) and of latency: the deployment target it is
measured on, its batch and threads, the widths kept and the predictor's check."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.errors import UserError
from autoprune.settings import BENCH, SEARCH, setting


@dataclass(frozen=True)
class ScoringSettings:
    """A candidate's score: its BatchNorm statistics recalibrated on ``calib_batches`` training batches (off
    with ``adaptive_bn=False``), then its accuracy on the first ``score_images`` held-out training images;
    latency's settings are ``LatencySettings``."""

    # 1 batch ranked candidates as well as 20 or 50 in all three fidelity studies (results/bench/fidelity*), at a
    # fraction of the time: ResNet-20 at 50% and 25% MACs, ResNet-56 at 50%
    calib_batches: int = setting(1, "training batches for adaptive-BN recalibration", identity=True,
                                 commands=(SEARCH, BENCH))
    score_images: int = setting(2000, "held-out images used to score a candidate", identity=True,
                                commands=(SEARCH, BENCH))
    adaptive_bn: bool = setting(True, "score without recalibrating BN (for comparison)", identity=True)

    def check_scoring(self) -> None:
        """The scoring settings' own checks; raises ``UserError`` on the first that fails."""
        for option, value in (("--calib-batches", self.calib_batches), ("--score-images", self.score_images)):
            if value < 1:
                raise UserError(f"{option} must be at least 1")


def _targets() -> list[str]:
    from autoprune.measure.target import target_names

    return target_names()


@dataclass(frozen=True)
class LatencySettings:
    """Latency is measured on ``target`` (``autoprune.measure.target``; ``auto``: onnxruntime on the CPU, torch
    on CUDA) at batch ``latency_batch`` with ``latency_threads`` threads (0: PyTorch's default here), and
    predicted from a per-layer table of that target, checked on ``latency_checks`` held-out subnets; a measurement
    takes ``latency_rounds`` interleaved rounds (``autoprune.measure.timing.time_interleaved``). ``widths``:
    ``efficient`` keeps only the widths no wider one runs faster on the target; ``all``, every multiple of a
    group's step."""

    target: str = setting("auto", "runtime latency is measured on: onnxruntime (the default on the CPU) or torch "
                          "(eager, the default on CUDA)", identity=True, choices=_targets, commands=(SEARCH, BENCH))
    latency_batch: int = setting(1, "batch size at which latency is predicted and measured, on --target",
                                 identity=True)
    latency_threads: int = setting(0, "threads latency is measured with (0: as many as PyTorch uses here)",
                                   identity=True, commands=(SEARCH, BENCH))
    widths: str = setting("efficient", "efficient: keep only widths no wider one runs faster on the target; "
                          "all: every multiple of a group's step", identity=True, choices=lambda: ["efficient", "all"],
                          commands=(SEARCH, BENCH))
    latency_checks: int = setting(4, "held-out subnets measured for real to check the latency predictor",
                                  commands=(SEARCH, BENCH))
    latency_rounds: int = setting(15, "interleaved rounds of about 20 ms a model in each latency measurement: "
                                  "more narrow the spread on a noisy machine", commands=(SEARCH, BENCH))

    def check_latency(self) -> None:
        """The latency settings' own checks; raises ``UserError`` on the first that fails."""
        if self.latency_batch < 1:
            raise UserError("--latency-batch must be at least 1")
        if self.latency_threads < 0:
            raise UserError("--latency-threads must be 0 (PyTorch's default) or more")
        if self.latency_checks < 0:
            raise UserError("--latency-checks must be 0 or more")
        if self.latency_rounds < 1:
            raise UserError("--latency-rounds must be at least 1")
