"""Every constraint of a joined budget is enforced: in ``Budget.feasible`` and where the search marks a
trial feasible (``autoprune.runners.trial.begin_trial``: the ``feasible`` user attr, which decides what is
scored, fine-tuned and shown as "infeasible" in trials.csv)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from autoprune.budget import parse_budget
from autoprune.candidate import Candidate
from autoprune.pruning.space import Cost
from autoprune.runners.trial import begin_trial

BASE = Cost(macs=100_000_000, params=4_000_000, latency_ms=20.0)

# (budget, cost, feasible, the constraints it breaks)
CASES = [
    ("50%flops,40%params", Cost(50_000_000, 1_600_000, 1.0), True, []),
    ("50%flops,40%params", Cost(10_000_000, 1_600_001, 1.0), False, ["40%params"]),
    ("50%flops,40%params", Cost(50_000_001, 100_000, 1.0), False, ["50%flops"]),
    ("50%flops,40%params", Cost(60_000_000, 2_000_000, 1.0), False, ["50%flops", "40%params"]),
    ("40%params,50%flops", Cost(60_000_000, 1_000_000, 1.0), False, ["50%flops"]),
    ("50%flops,40%params,10ms", Cost(50_000_000, 1_600_000, 10.0), True, []),
    ("50%flops,40%params,10ms", Cost(50_000_000, 1_600_000, 10.001), False, ["10ms"]),
    ("50%flops,40%params,10ms", Cost(50_000_000, 1_700_000, 5.0), False, ["40%params"]),
    ("50%flops,40%params,60%latency", Cost(10, 10, 12.5), False, ["60%latency"]),
    ("60MMACs,2.5Mparams,10ms", Cost(60_000_000, 2_500_001, 1.0), False, ["2.5Mparams"]),
]


@pytest.mark.parametrize("text, cost, feasible, broken", CASES)
def test_budget_feasible_needs_every_constraint(text, cost, feasible, broken):
    budget = parse_budget(text)
    assert budget.feasible(cost, BASE) is feasible
    assert [t for t, v in budget.violations(cost, BASE).items() if v > 0] == broken


class _Strategy:
    """Asks the study for a trial; the ratios do not matter to the stub space."""

    def ask(self, study):
        return study.ask(), {"g": 0.5}


def _space(cost: Cost):
    return SimpleNamespace(kept_channels=lambda ratios: {"g": 8}, cost_of_widths=lambda widths: cost,
                           base_cost=BASE)


@pytest.mark.parametrize("text, cost, feasible, broken", CASES)
def test_begin_trial_marks_feasible_only_within_every_constraint(text, cost, feasible, broken):
    budget = parse_budget(text)
    study = optuna.create_study(directions=["maximize", "minimize"])
    pending = begin_trial(study, _Strategy(), _space(cost), budget)
    assert pending.candidate.feasible is feasible
    assert pending.trial.user_attrs["feasible"] is feasible
    assert pending.trial.user_attrs["macs"] == cost.macs and pending.trial.user_attrs["params"] == cost.params
    assert pending.trial.user_attrs["widths"] == {"g": 8}
    # Optuna is told every constraint (a trial is feasible for it when all are <= 0)
    system = study.trials[pending.number].system_attrs
    constraints = {k.removeprefix("constraints:"): v for k, v in system.items() if k.startswith("constraints:")}
    assert constraints == budget.violations(cost, BASE)
    assert [k for k, v in constraints.items() if v > 0] == broken
    # and trials.csv says so
    frozen = study.tell(pending.trial, [0.5, float(cost.macs)])
    assert Candidate.from_trial(frozen, ["g"]).row()["state"] == ("complete" if feasible else "infeasible")
