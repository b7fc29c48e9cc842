"""Latency on the deployment target, set up once a run and measured on what ships.

``set_up_latency`` does, before the search:

1. the unpruned model prepared for the target (exported to ONNX for onnxruntime) and timed;
2. for channel pruning, the per-layer latency table of the target attached to the space, and each group kept
   to the widths the target runs efficiently (``autoprune.measure.predictor.efficient_widths``);
3. the predictor calibrated on the unpruned model and three subnets (``CALIBRATION``), measured side by side
   (``LatencyTable.fit``);
4. the predictor checked on ``latency_checks`` held-out subnets measured for real, beside the baseline.

In 3 and 4 a subnet's latency is the baseline's, as timed in step 1, over the subnet's speedup measured beside
the baseline (``_beside``): speedups hold from one measurement to the next where a machine's pace does not.

``measure_beside`` is the measurement every comparison uses: the baseline and the subnets in interleaved
rounds (``Target.time``), each subnet's median and spread, and its speedup
paired round by round. A resumed run reads the set-up back from ``latency.json`` in its directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from autoprune.budget import TIGHT_SHARE, Budget
from autoprune.config import SearchConfig
from autoprune.measure.latency import LatencyTable, default_cache
from autoprune.measure.predictor import (
    SMALLEST,
    Measured,
    PredictorCheck,
    ceiling_line,
    efficient_widths,
    rounded_widths,
)
from autoprune.measure.target import Call, Target, TorchTarget, make_target
from autoprune.measure.timing import Timing, paired_speedup
from autoprune.progress import console
from autoprune.pruning.base import Space
from autoprune.pruning.space import PruningSpace
from autoprune.results import atomic_write

RECORD = "latency.json"
MULTIPLES = (1, 4, 8, 16)  # channel roundings compared at set-up; the fastest is kept
SPREAD = 0.2  # a verdict whose speedup spreads more than this (relative, highest round less lowest) is timed again
# the subnets the predictor is calibrated on, besides the unpruned model: every group at this share of its range
CALIBRATION = {SMALLEST: 1.0, "two-thirds": 2 / 3, "one-third": 1 / 3}
NEAR_BUDGET = 3  # and these many subnets drawn within the budget, where the search's candidates will be


@dataclass
class LatencySetup:
    """A run's latency set-up: the ``target``, the unpruned model's call on it (``base_call``) and its
    ``baseline`` timing, each group's efficient ``widths`` (None: not restricted), the table's calibration
    (``offset_ms`` + ``scale`` x the table's sum), the subnets it was fitted on (``calibration``), the predictor's
    ``check`` and the ``seconds`` the set-up took."""

    target: Target
    base_call: Call
    baseline: Timing
    widths: dict[str, list[int]] | None
    offset_ms: float
    scale: float
    calibration: list[Measured]
    check: PredictorCheck
    seconds: float
    multiple: int | None = None  # the channel multiple the widths were rounded to, the fastest measured
    roundings: list[Measured] = field(default_factory=list)  # the half-width network at each multiple

    def to_record(self) -> dict:
        """latency.json: everything but the call."""
        return {"target": self.target.to_record(), "describe": self.target.describe(),
                "baseline": vars(self.baseline), "widths": self.widths, "offset_ms": self.offset_ms,
                "scale": self.scale, "calibration": [vars(m) for m in self.calibration],
                "check": self.check.to_record(), "seconds": round(self.seconds, 2), "multiple": self.multiple,
                "roundings": [vars(m) for m in self.roundings]}

    def describe(self) -> list[str]:
        """What the set-up found, in a few lines for the console."""
        lines = [f"latency on {self.target.describe()}: unpruned {self.baseline.describe(digits=3)}"]
        if self.widths is not None:
            kept = sum(len(w) for w in self.widths.values())
            fastest = _fastest(self.roundings) if self.roundings else self.multiple
            why = ("the fastest rounding measured" if fastest == self.multiple else
                   f"multiples of {fastest} ran fastest, but their narrowest subnet leaves the budget no room")
            lines.append(f"efficient widths: multiples of {self.multiple} channels ({why}), "
                         f"{kept} kept over {len(self.widths)} groups: none that a wider width runs faster")
        elif self.roundings:  # efficient widths were looked for
            lines.append("efficient widths: none kept, as the budget is out of reach with them at every rounding: "
                         "every width is searched")
        ceiling = ceiling_line(self.calibration)
        if ceiling is not None:
            lines.append(ceiling)
        lines.append(self.check.describe())
        return lines


def run_target(config: SearchConfig) -> Target:
    """The run's target, at its latency batch and threads, on its device."""
    return make_target(config.target, device=config.device, batch=config.latency_batch,
                       threads=config.latency_threads or None, rounds=config.latency_rounds)


def measure_beside(target: Target, base_call: Call, subnets: Mapping[str, tuple[Call, float | None, int | None]]
                   ) -> tuple[Timing, list[Measured]]:
    """Time the baseline and every subnet (``id -> (call, predicted ms or None, MACs or None)``) in interleaved
    rounds on ``target``; returns the baseline's timing and each subnet's measurement with its paired
    speedup."""
    rounds = target.time({"": base_call, **{k: v[0] for k, v in subnets.items()}})
    measured = []
    for name, (_, predicted, macs) in subnets.items():
        timing, speedup = Timing.of(rounds[name]), paired_speedup(rounds[""], rounds[name])
        measured.append(Measured(name, predicted, timing.ms, timing.low, timing.high, speedup.ms, speedup.low,
                                 speedup.high, macs))
    return Timing.of(rounds[""]), measured


def set_up_latency(config: SearchConfig, model: nn.Module, space: Space, input_shape: tuple[int, ...],
                   run_path: Path, budget: Budget, *, quiet: bool = True) -> LatencySetup:
    """Prepare ``model`` for the run's target, time it, and for channel pruning attach the target's latency table
    to ``space``, keep its groups to efficient widths (``config.widths``), calibrate and check the predictor.
    Where the efficient widths at the fastest rounding leave ``budget`` no room (their smallest subnet fills more
    than ``TIGHT_SHARE`` of it, or misses it), those at the next smaller multiple are kept, and with none of them
    every width (``_widths_for``). A run directory that holds
    latency.json (a resumed run) gives back its widths and calibration."""
    with _steps(quiet) as say:
        return _set_up(config, model, space, input_shape, run_path, budget, say)


@contextlib.contextmanager
def _steps(quiet: bool) -> Iterator[Callable[[str], None]]:
    """A function that shows the set-up's current step on a transient status line (nothing where ``quiet``)."""
    if quiet:
        yield lambda text: None
        return
    with console.status("latency set-up") as status:
        yield lambda text: status.update(f"latency set-up: {text}")


def _set_up(config: SearchConfig, model: nn.Module, space: Space, input_shape: tuple[int, ...], run_path: Path,
            budget: Budget, say: Callable[[str], None]) -> LatencySetup:
    tic = time.perf_counter()
    target = run_target(config)
    if isinstance(target, TorchTarget):
        target.choose_layout(model, input_shape)
    say(f"preparing the unpruned model for {target.runtime}")
    base_call = target.prepare(model, input_shape)
    saved = _read(run_path)
    baseline = Timing.of(target.time({"": base_call})[""])
    if not isinstance(space, PruningSpace):  # weight pruning: dense kernels, the same latency at any sparsity
        return LatencySetup(target, base_call, baseline, None, 0.0, 1.0, [], PredictorCheck(),
                            time.perf_counter() - tic)
    table = LatencyTable(space.latency_layers(), target, cache=default_cache())
    space.attach_latency(table, baseline.ms)
    if saved is not None:  # resumed: the run's own widths and calibration
        widths = saved["widths"]
        if widths is not None:
            space.keep_widths(widths)
        table.scale, table.offset = saved["scale"], saved["offset_ms"]
        space.costs.forget_base()
        return LatencySetup(target, base_call, Timing(**saved["baseline"]), widths, table.offset, table.scale,
                            [Measured(**m) for m in saved["calibration"]],
                            PredictorCheck.from_record(saved["check"]), saved["seconds"],
                            saved.get("multiple"), [Measured(**m) for m in saved.get("roundings", [])])
    widths, multiple, roundings = None, None, []
    if config.widths == "efficient":
        say(f"timing the half-width network rounded to {', '.join(map(str, MULTIPLES))} channels")
        multiple, roundings = _fastest_multiple(space, target, base_call, input_shape)
        say(f"timing each group's widths on the target (multiples of {multiple})")
        multiple, widths = _widths_for(space, table, budget, multiple)
    say(f"calibrating the latency predictor on {len(CALIBRATION)} subnets")
    at = {name: {g.name: g.low + (g.high - g.low) * share for g in space.groups} for name, share in CALIBRATION.items()}
    calibration = _beside(baseline, target, base_call, _prepared(space, target, at, input_shape))
    _fit(space, table, baseline, at, calibration)
    near = _near_budget(space, budget, config.seed)
    if near:  # where the search will draw: the line fitted again with these
        say(f"calibrating the latency predictor on {len(near)} subnets within the budget")
        at.update(near)
        calibration += _beside(baseline, target, base_call, _prepared(space, target, near, input_shape))
        _fit(space, table, baseline, at, calibration)
    calibration = [dataclasses.replace(m, predicted_ms=space.cost(at[m.id]).latency_ms) for m in calibration]
    check = PredictorCheck()
    if config.latency_checks:
        say(f"checking the predictor on {config.latency_checks} held-out subnets, measured for real")
        held_out = _held_out(space, config.latency_checks, config.seed)
        check.subnets = _beside(baseline, target, base_call, _prepared(space, target, held_out, input_shape))
    return LatencySetup(target, base_call, baseline, widths, table.offset, table.scale, calibration, check,
                        time.perf_counter() - tic, multiple, roundings)


def _fit(space: PruningSpace, table: LatencyTable, baseline: Timing, at: Mapping[str, Mapping[str, float]],
         measured: list[Measured]) -> None:
    """Fit the table's line on the unpruned model and the ``measured`` subnets (at the ratios ``at`` their ids
    name)."""
    table.fit([(space.costs.layer_dims({}), baseline.ms)]
              + [(space.costs.layer_dims(space.kept_channels(at[m.id])), m.ms) for m in measured])
    space.costs.forget_base()


def _near_budget(space: Space, budget: Budget, seed: int) -> dict[str, dict[str, float]]:
    """``NEAR_BUDGET`` subnets drawn as the random strategy draws them (``draw_in_budget``: a random direction
    scaled onto ``budget``), seeded; fewer where no draw fits."""
    from autoprune.search.allocation import draw_in_budget

    rng = np.random.default_rng(seed)
    near = {}
    for i in range(NEAR_BUDGET):
        try:
            near[f"near{i + 1}"] = draw_in_budget(space, budget, 0.05, rng)[0]
        except RuntimeError:  # nothing within the budget in its draws
            break
    return near


def _beside(baseline: Timing, target: Target, base_call: Call,
            subnets: Mapping[str, tuple[Call, float | None, int | None]]) -> list[Measured]:
    """``measure_beside``, each subnet's ms taken as ``baseline.ms`` over its paired speedup (its spread likewise):
    the subnets' latencies at the moment the set-up timed the baseline. A machine's pace drifts from one
    measurement to the next (a 2-core machine timed ResNet-20 at 0.69 ms, then 0.45 ms a minute later) while
    the speedups measured beside the baseline hold (2.12x, then 2.01x): the predictor is fitted and checked
    on these."""
    _, measured = measure_beside(target, base_call, subnets)
    return [dataclasses.replace(m, ms=baseline.ms / m.speedup, low=baseline.ms / m.speedup_high,
                                high=baseline.ms / m.speedup_low) for m in measured]


def save_setup(setup: LatencySetup, run_path: Path) -> None:
    """Write latency.json into the run directory."""
    atomic_write(run_path / RECORD, json.dumps(setup.to_record(), indent=2) + "\n")


def _read(run_path: Path) -> dict | None:
    path = run_path / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _subnet(space: Space, target: Target, ratios: Mapping[str, float], input_shape: tuple[int, ...]
            ) -> tuple[Call, float | None, int] | None:
    """The subnet at ``ratios`` prepared for ``target``, its predicted ms and MACs; None where the model does not
    run at those widths (a model of the user's may refuse some: the set-up measures the others)."""
    cost = space.cost(ratios)
    try:
        call = target.prepare(space.prune(ratios)[0], input_shape)
        call()
    except Exception:  # noqa: BLE001  (any failure means: not measurable at these widths)
        return None
    return call, cost.latency_ms, cost.macs


def _prepared(space: Space, target: Target, subnets: Mapping[str, Mapping[str, float]], input_shape: tuple[int, ...]
              ) -> dict[str, tuple[Call, float | None, int]]:
    """``_subnet`` of each named ratios, those the model runs at."""
    prepared = {name: _subnet(space, target, ratios, input_shape) for name, ratios in subnets.items()}
    return {name: p for name, p in prepared.items() if p is not None}


def _widths_for(space: Space, table: LatencyTable, budget: Budget, multiple: int
                ) -> tuple[int | None, dict[str, list[int]] | None]:
    """The widths each group keeps, and the multiple they are of: the efficient widths at ``multiple``, or where
    the smallest subnet would then fill more than ``TIGHT_SHARE`` of ``budget`` (groups too narrow to round, so
    that every candidate is about that subnet), at the next smaller multiple of ``MULTIPLES`` that leaves room;
    where none does, at the largest whose smallest subnet meets the budget; (None, None), no restriction, where
    none meets it. Restricts ``space`` so."""
    base = space.base_cost
    for accepts in (lambda cost: budget.share(cost, base) <= TIGHT_SHARE, lambda cost: budget.feasible(cost, base)):
        for m in [m for m in MULTIPLES if m <= multiple][::-1]:
            for g in space.groups:
                g.widths = None
            widths = efficient_widths(space, table, m)
            space.keep_widths(widths)
            if accepts(space.smallest_cost()):
                return m, widths
    for g in space.groups:
        g.widths = None
    return None, None


def _fastest_multiple(space: Space, target: Target, base_call: Call, input_shape: tuple[int, ...]
                      ) -> tuple[int, list[Measured]]:
    """Time the network at half of each group's range with its widths rounded to each of ``MULTIPLES`` (the
    smallest rounding on a tie within a 5% margin), beside the unpruned model; the fastest multiple and the
    measurements. Leaves the space's widths unrestricted."""
    middle = {g.name: (g.low + g.high) / 2 for g in space.groups}
    subnets = {}
    for multiple in MULTIPLES:
        space.keep_widths(rounded_widths(space, multiple))
        prepared = _subnet(space, target, middle, input_shape)
        if prepared is not None:
            subnets[str(multiple)] = prepared
        for g in space.groups:
            g.widths = None
    if not subnets:  # the model runs at none of them: no rounding
        return 1, []
    _, measured = measure_beside(target, base_call, subnets)
    return _fastest(measured), measured


def _fastest(roundings: list[Measured]) -> int:
    """The multiple of the fastest of ``roundings`` (timed in the order of ``MULTIPLES``, ascending): the least
    rounding within 5% of the fastest time."""
    best = min(m.ms for m in roundings)
    return int(next(m for m in roundings if m.ms <= best * 1.05).id)


def _held_out(space: Space, count: int, seed: int) -> dict[str, dict[str, float]]:
    """``count`` subnets spread over the space: the i-th at a mean ratio rising through each group's range, with
    every group's ratio drawn around it (seeded)."""
    rng = random.Random(seed)
    subnets = {}
    for i in range(count):
        level = (i + 0.5) / count
        subnets[f"check{i + 1}"] = {
            g.name: min(g.high, max(g.low, g.low + (g.high - g.low) * (level + rng.uniform(-0.25, 0.25))))
            for g in space.groups}
    return subnets


def time_subnet(setup: LatencySetup, subnet: nn.Module, input_shape: tuple[int, ...], name: str,
                predicted: float | None, macs: int | None) -> Measured:
    """The verdict on one subnet: prepared for the target as it would ship (exported for onnxruntime) and timed
    beside the unpruned model. Where its paired speedup spreads more than ``SPREAD`` of the median over the rounds
    (the machine was busy for much of the measurement), it is timed again, once, and the measurement with the
    narrower spread is kept."""
    subnets = {name: (setup.target.prepare(subnet, input_shape), predicted, macs)}
    _, (measured,) = measure_beside(setup.target, setup.base_call, subnets)
    if _spread(measured) > SPREAD:
        _, (again,) = measure_beside(setup.target, setup.base_call, subnets)
        measured = min(measured, again, key=_spread)
    return measured


def _spread(m: Measured) -> float:
    return (m.speedup_high - m.speedup_low) / m.speedup
