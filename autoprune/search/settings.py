"""The settings of the search itself: the strategy, its trials, and the per-group sensitivity it may use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import UserError
from autoprune.settings import BENCH, SEARCH, setting


def _strategies() -> list[str]:
    from autoprune.search import describe_strategies

    return list(describe_strategies())


def _strategy_help() -> str:
    from autoprune.search import describe_strategies

    return "; ".join(f"{k}: {v}" for k, v in describe_strategies().items())


def _pruners() -> list[str]:
    from autoprune.search.pruners import list_pruners

    return list_pruners()


def _pruner_help() -> str:
    from autoprune.search.pruners import PRUNERS

    return ("early-stopped scoring, for single-objective strategies (nsga2 scores in full); "
            + "; ".join(f"{k}: {v}" for k, v in PRUNERS.describe().items()))


def _damages() -> tuple[str, ...]:
    from autoprune.search.sensitivity import DAMAGES

    return DAMAGES


@dataclass(frozen=True)
class StrategySettings:
    """How candidates are proposed: ``strategy`` (a registered one) for ``trials`` trials; ``tolerance`` (a
    fraction: random's band below the budget, binary's allowed damage); ``pruner``, which stops a candidate's
    score early (``autoprune.search.pruners``); ``warm_start`` (try the uniform ratios
    first); PFP's error bound ``pfp_eps``; and the binary search's ``damage`` measure, which can also narrow the
    ratio bounds (``bounds_from_sensitivity``) or be read from an earlier run (``sensitivity_from``, a run
    directory)."""

    strategy: str = setting("tpe", _strategy_help, identity=True, choices=_strategies)
    trials: int = setting(40, "trials in the study, stopped, infeasible and failed ones included")
    # halving judged the most candidates a minute with the best proxy at equal search time (results/bench/efficiency)
    pruner: str = setting("halving", _pruner_help, identity=True, choices=_pruners, commands=(SEARCH, BENCH))
    tolerance: float = setting(
        0.02, "random: accept candidates within this fraction below the budget; binary: the damage a group may do "
        "(proxy drop or relative reconstruction error)", identity=True, commands=(SEARCH, BENCH))
    warm_start: bool = setting(False, "first try the uniform per-group ratio that meets the budget", identity=True)
    pfp_eps: float | None = setting(
        None, "strategy pfp: the error bound every group is allocated at; not given: the smallest that meets the "
        "budget", identity=True, metavar="EPS")
    damage: str = setting("proxy", "binary search damage: adaptive-BN proxy drop, or next-layer reconstruction error",
                          identity=True, choices=_damages)
    bounds_from_sensitivity: bool = setting(
        False, "narrow each group's ratio range to what the binary search found safe", identity=True)
    sensitivity_from: str | None = setting(
        None, "reuse the sensitivity.csv of an earlier run (same model, space and --tolerance) instead of measuring "
        "it again", identity=True, metavar="RUN_DIR")

    @property
    def uses_sensitivity(self) -> bool:
        """Whether the run measures (or reads) per-group sensitivity before the search."""
        return self.strategy == "binary" or self.bounds_from_sensitivity

    def check_strategy(self) -> None:
        """The strategy settings' own checks; raises ``UserError`` on the first that fails."""
        from autoprune.search import get_strategy  # noqa: F401  (fills the registry)
        from autoprune.search.sensitivity import read_sensitivity

        if self.strategy not in _strategies():
            raise UserError(f"unknown strategy '{self.strategy}' (choose from {', '.join(_strategies())})")
        if self.pruner not in _pruners():
            raise UserError(f"unknown pruner '{self.pruner}' (choose from {', '.join(_pruners())})")
        if self.trials < 1:
            raise UserError("--trials must be at least 1")
        if not 0 < self.tolerance < 1:
            raise UserError("--tolerance must be between 0 and 1")
        if self.damage not in _damages():
            raise UserError(f"--damage must be one of {', '.join(_damages())}")
        if self.pfp_eps is not None and (self.strategy != "pfp" or self.pfp_eps <= 0):
            raise UserError("--pfp-eps goes with --strategy pfp and must be positive")
        if self.sensitivity_from is not None:
            if not self.uses_sensitivity:
                raise UserError("--sensitivity-from needs --strategy binary or --bounds-from-sensitivity")
            if read_sensitivity(Path(self.sensitivity_from)) is None:
                raise UserError(f"--sensitivity-from: no sensitivity.csv in {self.sensitivity_from}")
