"""Timing forward passes: medians of timed calls, and interleaved rounds for measurements that are compared.

Measurements that are compared (a subnet and its baseline) are taken by ``time_interleaved``: rounds that
alternate the models, so that a machine's drift falls on all of them; each model's median round, with the
lowest and highest (``Timing``), and speedups paired round by round (``paired_speedup``).

This module imports no deep-learning framework (PyTorch only to wait for CUDA): onnxruntime's timing process
(``autoprune.measure.sessions``) runs it without loading PyTorch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ROUNDS = 15  # interleaved rounds of a measurement (--latency-rounds): short ones, so that models meet the same moments
ROUND_MS = 20.0  # each model's share of a round lasts about this long: its passes' median is the round's
REPEATS = (1, 400)  # the fewest and most timed passes of one model in one round
SETTLE = 3  # untimed passes before a model's share of a round (fewer where its share is fewer passes)
OUTLIER = 0.25  # a round more than this far from its model's median (relative) is timed again, once


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_forward(fn: Callable[[], object], device: str, *, warmup: int = 5, repeats: int = 30) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn()`` after ``warmup`` calls, CUDA synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - tic) * 1000.0)
    return statistics.median(samples)


@dataclass(frozen=True)
class Timing:
    """A measurement: ``ms``, the median of its rounds' medians, with the lowest and highest round (``low``,
    ``high``), over ``rounds`` rounds. A speedup is a ``Timing`` of ratios (no unit), the same way."""

    ms: float
    low: float
    high: float
    rounds: int

    @staticmethod
    def of(values: list[float]) -> Timing:
        """The median, lowest and highest of ``values`` (one per round)."""
        return Timing(statistics.median(values), min(values), max(values), len(values))

    def describe(self, unit: str = " ms", digits: int = 2) -> str:
        """``1.23 ms (1.20-1.27)``."""
        return f"{self.ms:.{digits}f}{unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def time_interleaved(calls: Mapping[str, Callable[[], object]], device: str = "cpu", *, rounds: int = ROUNDS,
                     warmup: int = 5) -> dict[str, list[float]]:
    """Each round times every call of ``calls`` for about ``ROUND_MS`` (within ``REPEATS`` passes; the median
    pass kept), in an order rotated from round to round; ``rounds`` rounds. A round in which some call is more
    than ``OUTLIER`` from that call's median of rounds (the machine was busy) is timed again, once. Returns each
    call's round medians in ms, in round order, so that two calls' rounds pair up (``paired_speedup``).

    The passes scale with a call's length: one pass after a cold one tells it, a call shorter than ``ROUND_MS`` is warmed up
    (``warmup``) and timed 3 times for its share of a round, and each share starts with up to ``SETTLE`` untimed
    passes, no more than it times. A call of seconds (an ImageNet-sized network at batch 64 on a CPU) thus takes
    2 passes a round rather than 8."""
    names = list(calls)
    repeats = {}
    for name in names:
        once = time_forward(calls[name], device, warmup=1, repeats=1)  # the first pass of a session can be far slower
        if once < ROUND_MS:
            once = time_forward(calls[name], device, warmup=warmup, repeats=3)
        repeats[name] = int(min(max(ROUND_MS / max(once, 1e-3), REPEATS[0]), REPEATS[1]))

    def one_round(index: int) -> dict[str, float]:
        order = names[index % len(names):] + names[:index % len(names)]
        # a few passes first: caches and the runtime's threads settle on this model
        return {name: time_forward(calls[name], device, warmup=min(SETTLE, repeats[name]), repeats=repeats[name])
                for name in order}

    results = [one_round(i) for i in range(rounds)]
    medians = {name: statistics.median(r[name] for r in results) for name in names}
    for i, r in enumerate(results):
        if any(abs(r[name] / medians[name] - 1) > OUTLIER for name in names):
            results[i] = one_round(i)
    return {name: [r[name] for r in results] for name in names}


def paired_speedup(base: list[float], subnet: list[float]) -> Timing:
    """The speedup of a subnet over its baseline from interleaved rounds (``time_interleaved``): each round's
    baseline ms over the subnet's, median and spread over the rounds."""
    return Timing.of([b / s for b, s in zip(base, subnet, strict=True)])
