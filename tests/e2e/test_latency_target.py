"""The default latency set-up as a user meets it: onnxruntime, efficient widths, the predictor's check, the
verdict on every fine-tuned subnet, and a latency budget judged by measurement."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from autoprune.cli import main
from autoprune.deployment import MULTIPLES
from autoprune.results import SubnetSpec

pytestmark = pytest.mark.slow


def _args(search_args, out, *extra):
    """The e2e search, with the latency options at their defaults (the fixture sets quick ones)."""
    args = list(search_args)
    for option in ("--target", "--widths", "--latency-checks"):
        at = args.index(option)
        del args[at : at + 2]
    # random draws within the budget: a candidate to fine-tune whatever the widths kept
    return [*args, "--strategy", "random", "--trials", "3", "--finetune-top", "1", "--finetune-epochs", "0.05",
            "--out", str(out), *extra]


def test_the_default_target_is_onnxruntime_with_efficient_widths_a_checked_predictor_and_a_verdict(
        search_args, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(search_args, out)) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    latency = json.loads((out / "latency.json").read_text())
    assert latency["target"]["target"] == "onnxruntime" and latency["target"]["batch"] == 1
    assert latency["multiple"] in MULTIPLES and [int(m["id"]) for m in latency["roundings"]] == list(MULTIPLES)
    groups = {g["name"]: g for g in yaml.safe_load((out / "config.yaml").read_text())["groups"]}
    for name, widths in latency["widths"].items():
        assert widths[-1] == groups[name]["channels"] and widths == sorted(set(widths))
        assert all(w % latency["multiple"] == 0 for w in widths[:-1])
    check = latency["check"]
    assert len(check["subnets"]) == 4 and check["mape"] >= 0 and -1 <= check["spearman"] <= 1
    assert f"predictor error on 4 held-out subnets: MAPE {check['mape']:.1%}" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert "latency_ms" not in trials and trials["predicted_latency_ms"].notna().all()
    (spec,) = [SubnetSpec.load(p.parent) for p in out.glob("subnets/*/spec.json")]
    assert spec.target == latency["describe"] and spec.target.startswith("onnxruntime")
    assert spec.latency_spread[0] <= spec.latency_ms <= spec.latency_spread[1]
    assert spec.speedup_spread[0] <= spec.speedup <= spec.speedup_spread[1] and spec.predicted_latency_ms > 0
    for name, kept in spec.kept.items():
        assert len(kept) in latency["widths"][name]
    report = (out / "report.md").read_text()
    assert "Latency: measured on onnxruntime" in report and "predictor error on 4 held-out subnets" in report
    assert f"{spec.speedup:.2f}x" in report and f"{spec.speedup:.2f}x" in printed


def test_a_latency_budget_is_judged_by_the_measurement_and_a_resume_keeps_the_set_up(
        search_args, tmp_path, flops_clock):
    out = tmp_path / "run"
    # on the FLOPs clock (one ms per MFLOP, torch target): the verdict does not depend on this machine
    args = [a if a != "50%flops" else "60%latency" for a in _args(search_args, out, "--target", "torch",
                                                                  "--latency-checks", "2")]
    assert main([*args, "--quiet"]) == 0
    latency = json.loads((out / "latency.json").read_text())
    (spec,) = [SubnetSpec.load(p.parent) for p in out.glob("subnets/*/spec.json")]
    limit = 0.6 * latency["baseline"]["ms"]
    report = (out / "report.md").read_text()
    verdict = "met" if spec.latency_ms <= limit else "NOT met"
    assert f"- {spec.id}: {spec.latency_ms:.3f} ms measured against {limit:.3f} ms: {verdict}" in report
    # the FLOPs clock is exact: the predictor, calibrated on two subnets, is near and orders them right
    assert latency["check"]["mape"] < 0.2 and math.isclose(latency["check"]["spearman"], 1.0)
    assert main([*args, "--quiet", "--resume", "--trials", "4"]) == 0
    assert json.loads((out / "latency.json").read_text()) == latency  # read back, not measured again
