"""Budgets: ``50%flops``, ``40%params``, ``60MMACs``, ``120MFLOPs``, ``8ms``, ``50%latency``, joined by commas.

One convention throughout: we count MACs (multiply-accumulates of conv and linear layers) and
FLOPs = 2 x MACs. A percentage is the same whichever of the two is named.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from autoprune.errors import UserError
from autoprune.pruning.space import Cost

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
# ASCII only: under IGNORECASE alone, the long s matches 's' and the Kelvin sign 'k' (a '5mſ' got past the
# pattern to fail in float()), and \d takes any script's digits
_FLAGS = re.IGNORECASE | re.ASCII
_RELATIVE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*%\s*(?P<metric>flops|macs|params|latency)$", _FLAGS)
_ABSOLUTE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*(?P<prefix>[kmg]?)\s*(?P<metric>flops|macs|params)$", _FLAGS)
_LATENCY = re.compile(r"^\d+(?:\.\d+)?\s*ms$", _FLAGS)


TIGHT_SHARE = 0.9  # a budget the smallest subnet of a space fills beyond this leaves a search little to choose


@dataclass(frozen=True)
class Constraint:
    """A ceiling on one cost metric, ``macs``, ``params`` or ``latency_ms``: a fraction of the
    baseline (its measured latency, for ``50%latency``) or an absolute value."""

    metric: str
    fraction: float | None
    absolute: float | None
    text: str

    def limit(self, base: Cost) -> float:
        """The ceiling in the metric's unit (MACs, parameters or ms) for the unpruned model's cost ``base``:
        ``fraction`` times its value, or the absolute value. A ``50%latency`` needs ``base.latency_ms``
        (``TypeError`` where it is None)."""
        if self.fraction is not None:
            return self.fraction * getattr(base, self.metric)
        return float(self.absolute)  # type: ignore[arg-type]

    def violation(self, cost: Cost, base: Cost) -> float:
        """value / limit - 1: <= 0 means within budget (Optuna's constraint convention)."""
        return getattr(cost, self.metric) / self.limit(base) - 1.0


@dataclass(frozen=True)
class Budget:
    """A parsed budget (``parse_budget``): its ``constraints``, one per metric in the order given, all of which a
    candidate must meet, and its ``text``, the parts joined by commas."""

    constraints: tuple[Constraint, ...]
    text: str

    @property
    def primary(self) -> Constraint:
        """The first constraint given: the one the budget allocations (``autoprune.search.allocation``) fill and
        NSGA-II minimises."""
        return self.constraints[0]

    def violations(self, cost: Cost, base: Cost) -> dict[str, float]:
        """``Constraint.violation`` of ``cost`` against ``base`` (the unpruned model's cost), keyed by each
        constraint's text: <= 0 means within it."""
        return {c.text: c.violation(cost, base) for c in self.constraints}

    def share(self, cost: Cost, base: Cost) -> float:
        """The share of the budget ``cost`` takes: the largest value / limit over the constraints (``base``: the
        unpruned model's cost). At most 1 within the budget; ``TIGHT_SHARE`` and above for a space's smallest
        subnet, a budget that leaves a search little to choose."""
        return 1.0 + max(self.violations(cost, base).values())

    def feasible(self, cost: Cost, base: Cost) -> bool:
        """Whether ``cost`` meets every constraint (``base``: the unpruned model's cost), to within 1e-12."""
        return all(v <= 1e-12 for v in self.violations(cost, base).values())

    def scaled(self, level: float) -> Budget:
        """This budget with its first constraint's limit times ``level`` (a fraction, 1: unchanged) and the others
        as they are: the share of the budget a candidate of NSGA-II's front fills."""
        first, *rest = self.constraints
        fraction = None if first.fraction is None else first.fraction * level
        absolute = None if first.absolute is None else first.absolute * level
        return Budget((replace(first, fraction=fraction, absolute=absolute), *rest), self.text)

    def loose(self, base: Cost) -> list[Constraint]:
        """The constraints the unpruned model ``base`` already meets (limit >= its value): they prune nothing."""
        return [c for c in self.constraints if c.violation(base, base) <= 1e-12]

    @property
    def needs_latency(self) -> bool:
        """Whether a constraint is on latency, so that the search needs a latency table."""
        return any(c.metric == "latency_ms" for c in self.constraints)

    def without_latency(self) -> Budget | None:
        """The MAC and parameter constraints alone (None where there are none): what can be checked before
        the latency is measured."""
        kept = tuple(c for c in self.constraints if c.metric != "latency_ms")
        return Budget(kept, ",".join(c.text for c in kept)) if kept else None

    def describe(self, base: Cost) -> str:
        """Each constraint with its limit for ``base``, e.g. ``50%flops (<= 20.407M MACs, 50.0% of baseline)``;
        latency limits in ms."""
        parts = []
        for c in self.constraints:
            limit = c.limit(base)
            share = f"{limit / getattr(base, c.metric):.1%} of baseline"
            if c.metric == "latency_ms":
                parts.append(f"{c.text} (<= {limit:.3f} ms predicted, {share})")
            else:
                unit = "MACs" if c.metric == "macs" else "params"
                parts.append(f"{c.text} (<= {limit / 1e6:.3f}M {unit}, {share})")
        return ", ".join(parts)


def all_of(budgets: Iterable[Budget]) -> Budget:
    """One budget that a cost meets where it meets every one of ``budgets``: all their constraints, a metric perhaps
    more than once, the relative ones first from the smallest fraction (its ``primary``, the one the allocations fill,
    is then the tightest share of the unpruned model), then the absolute ones as given. What a width rule shared
    by several budgets must reach."""
    budgets = list(budgets)
    constraints = [c for b in budgets for c in b.constraints]
    ordered = sorted((c for c in constraints if c.fraction is not None), key=lambda c: c.fraction)
    ordered += [c for c in constraints if c.fraction is None]
    return Budget(tuple(ordered), ",".join(c.text for c in ordered))


def parse_budget(text: str) -> Budget:
    """Parse a budget string; every malformed or impossible budget is a ``UserError``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"budget '{text}' is empty (examples: 50%flops, 40%params, 60MMACs)")
    constraints = []
    for part in parts:
        constraints.append(_parse_one(part))
    metrics = [c.metric for c in constraints]
    if len(set(metrics)) != len(metrics):
        raise UserError(f"budget '{text}' constrains the same metric twice")
    return Budget(tuple(constraints), ",".join(parts))


def _parse_one(part: str) -> Constraint:
    rel = _RELATIVE.match(part)
    if rel:
        value = float(rel["num"])
        if not 0.0 < value < 100.0:
            raise UserError(f"budget '{part}': a percentage must be above 0 and below 100")
        return Constraint(_metric(rel["metric"]), value / 100.0, None, part)
    absolute = _ABSOLUTE.match(part)
    if absolute:
        value = float(absolute["num"]) * _PREFIX[absolute["prefix"].lower()]
        metric = absolute["metric"].lower()
        if metric == "flops":
            value /= 2.0  # FLOPs = 2 x MACs
        _check_positive(part, value)
        return Constraint(_metric(metric), None, value, part)
    if _LATENCY.match(part):
        value = float(part.lower().removesuffix("ms").strip())
        _check_positive(part, value)
        return Constraint("latency_ms", None, value, part)
    raise UserError(
        f"budget '{part}' not understood (examples: 50%flops, 40%params, 60MMACs, 120MFLOPs, 2.5Mparams, 8ms)"
    )


def _check_positive(part: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"budget '{part}' must be positive")
    if not math.isfinite(value):
        raise UserError(f"budget '{part}' is too large")


def _metric(word: str) -> str:
    return {"params": "params", "latency": "latency_ms"}.get(word.lower(), "macs")
