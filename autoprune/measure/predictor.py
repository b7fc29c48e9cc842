"""The latency predictor's two jobs besides predicting: the widths a target runs fast, and its own check.

- ``efficient_widths``: each group's candidate widths timed on the target through the latency table (the
  layers the group cuts, the other groups whole), keeping only the widths that no wider width beats: a
  searched subnet is never slower than a wider one it could have been. Runtimes run some widths far
  faster than their neighbours (onnxruntime's CPU convolutions, multiples of 8), so this is where most
  of a pruned network's real speed is won or lost.
- ``PredictorCheck``: the prediction against measurements of held-out subnets, as the mean absolute
  percentage error and Spearman's rank correlation.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from autoprune.measure.latency import LatencyTable
from autoprune.pruning.base import Space

TOLERANCE = 0.05  # a width is dropped where a wider one runs more than this much (relative) faster


def candidate_widths(space: Space, name: str, multiple: int = 1) -> list[int]:
    """Every width the group ``name`` can keep within its ratio bounds that is a multiple of its step and of
    ``multiple`` (where the group has one below its full width), and its full width; ascending. Read before
    the group's widths are restricted (``Space.keep_widths``)."""
    group = next(g for g in space.groups if g.name == name)
    narrowest = space.kept_channels({name: group.high})[name]
    step = math.lcm(group.step, multiple)
    widths = [w for w in range(narrowest, group.channels + 1, group.step) if w % step == 0]
    return sorted({*(widths or range(narrowest, group.channels + 1, group.step)), group.channels})


def rounded_widths(space: Space, multiple: int) -> dict[str, list[int]]:
    """Every group's ``candidate_widths`` at ``multiple``: the space rounded to it."""
    return {g.name: candidate_widths(space, g.name, multiple) for g in space.groups}


def group_ms(space: Space, table: LatencyTable, name: str, widths: Sequence[int],
             again: Collection[int] = ()) -> dict[int, float]:
    """Per width of ``widths``: the table's ms of the layers group ``name`` cuts at that width, the other groups
    whole (not calibrated: only their order matters). The layers of the widths in ``again`` are timed once more
    (``LatencyTable.layer_ms``)."""
    full = space.costs.layer_dims({})
    narrowest = space.costs.layer_dims({name: min(widths)})
    cut = [layer for layer in table.layers if narrowest[layer] != full[layer]]
    times = {}
    for width in widths:
        dims = space.costs.layer_dims({name: width})
        times[width] = sum(table.layer_ms(layer, *dims[layer], again=width in again) for layer in cut)
    table.save()
    return times


def efficient_widths(space: Space, table: LatencyTable, multiple: int = 1,
                     tolerance: float = TOLERANCE) -> dict[str, list[int]]:
    """Per group of ``space``: its candidate widths at ``multiple`` that no wider width runs more than
    ``tolerance`` faster, ascending, ending at the full width. Times each width's layers on the table's target
    (cached); a width about to be dropped is timed again, with the wider one that beats it, so that a timing
    taken while the machine was busy does not drop it."""
    kept = {}
    for group in space.groups:
        widths = candidate_widths(space, group.name, multiple)
        times = group_ms(space, table, group.name, widths)
        beaten = _beaten(times, tolerance)
        if beaten:
            times = group_ms(space, table, group.name, widths, again={*beaten, *beaten.values()})
            beaten = _beaten(times, tolerance)
        kept[group.name] = [w for w in widths if w not in beaten]
    return kept


def _beaten(times: Mapping[int, float], tolerance: float) -> dict[int, int]:
    """Each width of ``times`` (width -> ms) that a wider one runs more than ``tolerance`` faster, with the
    fastest of the wider ones."""
    beaten = {}
    fastest = None
    for width in sorted(times, reverse=True):  # widest first: the fastest of the wider ones is known at each step
        if fastest is not None and times[width] > times[fastest] * (1 + tolerance):
            beaten[width] = fastest
        if fastest is None or times[width] < times[fastest]:
            fastest = width
    return beaten


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of average ranks (ties share a rank); NaN for fewer
    than two pairs or a constant side."""
    if len(a) < 2:
        return math.nan
    return float(pd.Series(list(a)).rank().corr(pd.Series(list(b)).rank()))


@dataclass
class Measured:
    """A subnet measured on the target: its id, the predicted ms, the measured median ms of interleaved rounds
    with the lowest and highest round, and the speedup over the baseline measured beside it (median, low,
    high)."""

    id: str
    predicted_ms: float | None
    ms: float
    low: float
    high: float
    speedup: float
    speedup_low: float
    speedup_high: float
    macs: int | None = None

    @property
    def error(self) -> float | None:
        """Predicted over measured, minus one; None without a prediction."""
        return None if self.predicted_ms is None else self.predicted_ms / self.ms - 1


SMALLEST = "smallest"  # the calibration subnet with every group at its smallest width


def ceiling_line(calibration: Sequence[Measured]) -> str | None:
    """Where pruning ends on the target: the speedup measured of the subnet with every group at its smallest width
    (the calibration's ``smallest``), in a sentence; None where it was not measured. Latency is not monotone in
    the widths (a 49%-MACs ResNet-20 measured 1.75x where its smallest subnet measured 1.64x), so this is a
    guide to what pruning can gain, not a bound."""
    smallest = next((m for m in calibration if m.id == SMALLEST), None)
    if smallest is None:
        return None
    return (f"smallest subnet of the space (every group at its smallest width): {smallest.ms:.3f} ms, "
            f"{smallest.speedup:.2f}x ({smallest.speedup_low:.2f}-{smallest.speedup_high:.2f}) the unpruned model's "
            "speed, about what pruning can gain on this target")


@dataclass
class PredictorCheck:
    """Predicted against measured latency on held-out subnets (``subnets``, the calibration's excluded):
    ``mape`` (mean absolute percentage error, a fraction) and ``spearman``."""

    subnets: list[Measured] = field(default_factory=list)

    @property
    def pairs(self) -> list[Measured]:
        """The subnets that have a prediction."""
        return [m for m in self.subnets if m.predicted_ms is not None]

    @property
    def mape(self) -> float:
        """Mean of |predicted / measured - 1| (a fraction); NaN without pairs."""
        pairs = self.pairs
        return float(np.mean([abs(m.error) for m in pairs])) if pairs else math.nan

    @property
    def spearman(self) -> float:
        """Rank correlation of predicted and measured ms."""
        pairs = self.pairs
        return spearman([m.predicted_ms for m in pairs], [m.ms for m in pairs])

    def describe(self) -> str:
        """``predictor error on 6 held-out subnets: MAPE 4.2%, Spearman 0.94``."""
        n = len(self.pairs)
        if not n:
            return "predictor not checked: no held-out subnet measured"
        rho = "n/a" if math.isnan(self.spearman) else f"{self.spearman:.2f}"
        return f"predictor error on {n} held-out subnet{'s' if n != 1 else ''}: MAPE {self.mape:.1%}, Spearman {rho}"

    def to_record(self) -> dict:
        """What run.json keeps: the figures and every subnet measured."""
        return {"mape": self.mape, "spearman": self.spearman, "subnets": [vars(m) for m in self.subnets]}

    @staticmethod
    def from_record(record: Mapping | None) -> PredictorCheck:
        """Read back ``to_record``; an empty check for None."""
        return PredictorCheck([Measured(**m) for m in (record or {}).get("subnets", [])])
