"""A latency budget judged by measurement, and a resume that keeps the latency set-up. The default set-up as a
user meets it (onnxruntime, efficient widths, the predictor's check, the verdict on the fine-tuned subnet) is
checked on the default job, in test_default_job.py."""

from __future__ import annotations

import json
import math

import pytest
from quick import LATENCY_FLAGS

from autoprune.cli import main
from autoprune.report import describe_speedup
from autoprune.results import SubnetSpec

pytestmark = pytest.mark.slow


def _args(search_args, out, *extra):
    """The e2e search, with the latency options at their defaults (the fixture sets quick ones)."""
    args = list(search_args)
    for option in LATENCY_FLAGS:
        at = args.index(option)
        del args[at : at + 2]
    # random draws within the budget: a candidate to fine-tune whatever the widths kept
    return [*args, "--strategy", "random", "--trials", "3", "--finetune-top", "1", "--finetune-epochs", "0.05",
            "--out", str(out), *extra]


def test_a_latency_budget_is_judged_by_the_measurement_and_a_resume_keeps_the_set_up(
        search_args, tmp_path, flops_clock):
    out = tmp_path / "run"
    # on the FLOPs clock (one ms per MFLOP, torch target): the verdict does not depend on this machine
    args = [a if a != "50%flops" else "60%latency" for a in _args(search_args, out, "--target", "torch",
                                                                  "--latency-checks", "2", "--latency-rounds", "4")]
    assert main([*args, "--quiet"]) == 0
    latency = json.loads((out / "latency.json").read_text())
    assert latency["baseline"]["rounds"] == 4  # --latency-rounds
    (spec,) = [SubnetSpec.load(p.parent) for p in out.glob("subnets/*/spec.json")]
    report = (out / "report.md").read_text()
    verdict = "met" if spec.speedup >= 1 / 0.6 else "NOT met"  # a share of latency: by the speedup beside the baseline
    assert (f"- {spec.id}: {describe_speedup(spec)} measured beside the unpruned model against the 1.67x that "
            f"60%latency asks: {verdict}") in report
    # the FLOPs clock is exact: the predictor, calibrated on two subnets, is near and orders them right
    assert latency["check"]["mape"] < 0.2 and math.isclose(latency["check"]["spearman"], 1.0)
    assert main([*args, "--quiet", "--resume", "--trials", "4"]) == 0
    assert json.loads((out / "latency.json").read_text()) == latency  # read back, not measured again


def test_the_subnets_fine_tuned_in_a_run_are_timed_again_together(search_args, tmp_path, monkeypatch):
    from autoprune import finetuning

    joint = []

    def spy(target, base_call, subnets):
        base, measured = real(target, base_call, subnets)
        joint.append(measured)
        return base, measured

    real = finetuning.measure_beside
    monkeypatch.setattr(finetuning, "measure_beside", spy)
    out = tmp_path / "run"
    assert main([*search_args, "--strategy", "random", "--trials", "3", "--finetune-top", "2", "--finetune-epochs",
                 "0.05", "--out", str(out), "--quiet"]) == 0
    (measured,) = joint  # one measurement of both, after both were fine-tuned
    specs = {s.id: s for s in (SubnetSpec.load(p.parent) for p in out.glob("subnets/*/spec.json"))}
    assert len(specs) == 2 and sorted(m.id for m in measured) == sorted(specs)
    for m in measured:  # what spec.json, the table and the report show
        spec = specs[m.id]
        assert (spec.latency_ms, spec.latency_spread, spec.speedup, spec.speedup_spread) == (
            m.ms, [m.low, m.high], m.speedup, [m.speedup_low, m.speedup_high])
