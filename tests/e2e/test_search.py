"""End-to-end searches on real Fashion-MNIST images, through the CLI and the Python API, with the
values they report checked against independent computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from quick import QUICK_OPTIONS
from run_checks import best_by_proxy, non_dominated, subnet_specs

import autoprune
from autoprune import finetuning
from autoprune.cli import main
from autoprune.config import SHIPPED_WEIGHTS, SearchConfig
from autoprune.data import load_data
from autoprune.export import export_subnet
from autoprune.measure import accuracy
from autoprune.models import create_model, load_weights
from autoprune.workbench import load_workbench, make_evaluator

SHIPPED = SHIPPED_WEIGHTS[("resnet20", "fashion-mnist")]


@pytest.mark.slow
def test_search_writes_a_complete_run(tmp_path, search_args, fmnist_npz):
    run = tmp_path / "run"
    assert main(search_args + ["--trials", "6", "--finetune-top", "2", "--out", str(run)]) == 0

    for name in ("config.yaml", "run.json", "study.db", "trials.csv", "pareto.csv", "pareto.json",
                 "pareto.png", "report.md"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 6 and list(trials["number"]) == list(range(6))
    assert any(c.startswith("ratio:") for c in trials.columns)

    pareto = json.loads((run / "pareto.json").read_text())
    base_macs = pareto["baseline"]["macs"]
    # the data discriminates: the baseline is well below 100% and the candidates score apart
    assert 0.8 < pareto["baseline"]["test_acc"] < 0.99
    assert trials["proxy_acc"].nunique() >= 2
    subnets = subnet_specs(run)
    # the fine-tuned subnets are exactly the best candidates by proxy
    assert [s["trial"] for s in subnets] == sorted(best_by_proxy(trials, 2))
    data = load_data(fmnist_npz, holdout=200, seed=0)
    for spec in subnets:
        assert spec["macs"] <= 0.5 * base_macs
        assert spec["proxy_acc"] == trials.set_index("number").loc[spec["trial"], "proxy_acc"]
        subnet = autoprune.load_subnet(run / "subnets" / spec["id"])
        # the reloaded subnet has the searched widths and scores exactly what was recorded: the
        # fine-tuned weights were saved, not the merely recalibrated ones (which score otherwise)
        assert sum(p.numel() for p in subnet.parameters()) == spec["params"]
        assert accuracy(subnet, data.test) == spec["test_acc"]
        assert accuracy(subnet, data.holdout) == spec["holdout_acc"]
        state = torch.load(run / "subnets" / spec["id"] / "weights.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert len({s["test_acc"] for s in subnets}) == len(subnets)  # the front below compares unequal values
    # the front is exactly the non-dominated subnets (test accuracy up, MACs down)
    points = {s["id"]: (s["test_acc"], s["macs"]) for s in subnets}
    assert {r["id"] for r in pareto["front"]} == non_dominated(points)
    # measured latency of the baseline and every fine-tuned subnet, whatever the budget (timings: how
    # large they are depends on this machine, so only that they are there, finite and not negative)
    assert all(0 <= ms < math.inf for ms in [pareto["baseline"]["latency_ms"]] + [s["latency_ms"] for s in subnets])
    scored = trials[trials["proxy_acc"].notna()]
    assert len(scored) and scored["predicted_latency_ms"].between(0, math.inf).all()  # every candidate's, predicted
    # what optuna-dashboard shows of a trial: cost, latency and the kept width of every group
    study = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{run / 'study.db'}")
    groups = [c.removeprefix("ratio:") for c in trials.columns if c.startswith("ratio:")]
    for t in study.trials:
        assert {"macs", "params", "widths", "feasible"} <= set(t.user_attrs)
        assert set(t.user_attrs["widths"]) == set(groups)
        assert ("predicted_latency_ms" in t.user_attrs) == ("macs" in t.user_attrs)  # every costed candidate's
    assert "baseline" in (run / "report.md").read_text()


def test_random_strategy_lands_just_under_budget(tmp_path, search_args):
    run = tmp_path / "run"
    args = search_args + ["--strategy", "random", "--trials", "4", "--finetune-top", "1", "--tolerance", "0.03",
                          "--out", str(run)]
    assert main(args) == 0
    trials = pd.read_csv(run / "trials.csv")
    base = json.loads((run / "pareto.json").read_text())["baseline"]["macs"]
    assert trials["state"].isin(["complete", "stopped"]).all()  # every one within the budget, scored
    use = trials["macs"] / base
    assert ((use <= 0.5) & (use >= 0.5 * 0.97)).all(), use.tolist()
    assert f"4 candidates from {int(trials['draws'].sum())} draws" in (run / "report.md").read_text()


def test_python_api_with_a_model_object(tmp_path, fmnist_npz):
    data = load_data(fmnist_npz, holdout=200, seed=0)
    model = create_model("resnet20", in_channels=1, num_classes=data.num_classes)
    load_weights(model, SHIPPED)
    result = autoprune.search(model, fmnist_npz, budget="40%params", trials=3, finetune_top=1, finetune_epochs=0.2,
                              holdout=200, batch_size=64, calib_batches=2, score_images=200, **QUICK_OPTIONS,
                              out=str(tmp_path / "api"), quiet=True)
    assert result.best is not None and len(result.pareto) >= 1
    assert result.best.params <= 0.4 * result.baseline["params"]
    subnet = autoprune.load_subnet(result.best.path, base_model=model)
    assert accuracy(subnet, data.test) == result.best.test_acc
    # its subnets export from Python, with the model
    check = export_subnet(result.run_dir, Path(result.best.path).name, "torch-export", base_model=model)
    assert check.ok and Path(check.path).is_file()


@pytest.mark.slow
def test_nsga2_fine_tunes_a_front_of_costs(tmp_path, search_args):
    run = tmp_path / "run"
    args = search_args + ["--strategy", "nsga2", "--warm-start", "--trials", "12", "--finetune-top", "3",
                          "--finetune-epochs", "0.1", "--out", str(run)]
    assert main(args) == 0
    trials = pd.read_csv(run / "trials.csv")
    ratio_cols = [c for c in trials.columns if c.startswith("ratio:")]
    assert trials.loc[0, ratio_cols].nunique() == 1  # the warm start: uniform ratios
    base = json.loads((run / "pareto.json").read_text())["baseline"]["macs"]
    subnets = subnet_specs(run)
    assert len(subnets) == 3
    assert all(s["macs"] <= 0.5 * base for s in subnets)
    assert len({s["macs"] for s in subnets}) == 3


@pytest.mark.slow
def test_binary_strategy_alone_and_as_bounds(tmp_path, tiny_search_args):
    binary = tmp_path / "binary"
    assert main(tiny_search_args + ["--strategy", "binary", "--trials", "3", "--finetune-top", "1",
                               "--finetune-epochs", "0.1", "--out", str(binary)]) == 0
    sens = pd.read_csv(binary / "sensitivity.csv")
    assert (binary / "sensitivity.png").is_file()
    assert list(sens.columns) == ["group", "channels", "macs_saved_at_max", "max_safe_ratio", "curve"]
    trials = pd.read_csv(binary / "trials.csv")
    assert len(trials) == 3 and trials["state"].isin(["complete", "stopped"]).all()

    bounded = tmp_path / "bounded"
    assert main(tiny_search_args + ["--bounds-from-sensitivity", "--damage", "recon", "--tolerance", "0.05",
                               "--trials", "5", "--finetune-top", "0", "--out", str(bounded)]) == 0
    def highs(run):
        return {g["name"]: g["high"] for g in yaml.safe_load((run / "config.yaml").read_text())["groups"]}

    groups, original = highs(bounded), highs(binary)
    safe = pd.read_csv(bounded / "sensitivity.csv").set_index("group")["max_safe_ratio"]
    assert all(safe[name] - 1e-9 <= groups[name] <= original[name] for name in groups)
    assert any(groups[name] < original[name] for name in groups)
    trials = pd.read_csv(bounded / "trials.csv")
    for name, high in groups.items():
        assert (trials[f"ratio:{name}"] <= high + 1e-9).all()


def test_sensitivity_command_runs_only_that_phase(tmp_path, tiny_search_args, monkeypatch):
    run = tmp_path / "sens"
    assert main(["sensitivity", *tiny_search_args[1:], "--out", str(run)]) == 0
    assert (run / "sensitivity.csv").is_file() and (run / "sensitivity.png").is_file()
    assert not (run / "trials.csv").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "complete"

    # a later search reuses it instead of measuring again: the same ratios bound its space
    def measure_again(*args, **kwargs):
        raise AssertionError("--sensitivity-from measured the sensitivity again")

    monkeypatch.setattr("autoprune.pipeline.measure_sensitivity", measure_again)
    reuse = tmp_path / "reuse"
    assert main(tiny_search_args + ["--bounds-from-sensitivity", "--sensitivity-from", str(run), "--trials", "2",
                               "--finetune-top", "0", "--out", str(reuse)]) == 0
    assert (reuse / "sensitivity.csv").read_text() == (run / "sensitivity.csv").read_text()
    assert main(tiny_search_args + ["--sensitivity-from", str(run), "--out", str(tmp_path / "x")]) == 2
    assert main(tiny_search_args + ["--strategy", "binary", "--sensitivity-from", str(tmp_path),
                               "--out", str(tmp_path / "y")]) == 2


def test_latency_budget(tmp_path, tiny_search_args, flops_clock):
    run = tmp_path / "run"
    args = _replace_budget(tiny_search_args, "70%latency") + [
        "--strategy", "random", "--warm-start", "--latency-batch", "32", "--trials", "4", "--finetune-top", "2",
        "--finetune-epochs", "0.1", "--out", str(run)]
    assert main(args) == 0
    assert json.loads((run / "latency.json").read_text())["target"]["batch"] == 32
    budget_ms = 0.7 * json.loads((run / "pareto.json").read_text())["baseline"]["latency_ms"]
    trials = pd.read_csv(run / "trials.csv")
    assert trials["state"].isin(["complete", "stopped"]).all()
    assert (trials["predicted_latency_ms"] <= budget_ms + 1e-6).all()
    subnets = subnet_specs(run)
    assert len(subnets) == 2 and all(s["predicted_latency_ms"] <= budget_ms + 1e-6 for s in subnets)
    assert all(0 <= s["latency_ms"] < math.inf for s in subnets)  # measured; its figures are in the notes, not asserted
    assert trials["predicted_latency_ms"].notna().all()  # every candidate's, predicted
    report = (run / "report.md").read_text()
    assert "Predicted (the target's latency table) vs measured latency" in report
    assert "Latency budget, judged by the measurement" in report


def _replace_budget(args, budget):
    args = list(args)
    args[args.index("--budget") + 1] = budget
    return args


@pytest.mark.parametrize(("budget", "limits"), [
    ("50%flops,40%params", {"macs": (0.5, None), "params": (0.4, None)}),
    ("12MMACs", {"macs": (None, 12e6)}),
    ("30MFLOPs,0.15Mparams", {"macs": (None, 15e6), "params": (None, 0.15e6)}),  # FLOPs = 2 x MACs
])
def test_every_constraint_of_a_budget_holds(tmp_path, search_args, budget, limits):
    run = tmp_path / "run"
    args = _replace_budget(search_args, budget) + ["--trials", "6", "--finetune-top", "1", "--finetune-epochs", "0.05",
                                                   "--out", str(run)]
    assert main(args) == 0
    base = json.loads((run / "pareto.json").read_text())["baseline"]
    limits = [(metric, base[metric] * share if share else absolute) for metric, (share, absolute) in limits.items()]
    trials = pd.read_csv(run / "trials.csv")
    within = trials.apply(lambda t: all(t[metric] <= limit for metric, limit in limits), axis=1)
    # every trial within it (TPE proposes none over it), and so scored: in full, or stopped by the pruner
    assert within.all() and trials["state"].isin(["complete", "stopped"]).all(), trials[["state", "macs", "params"]]
    assert all(all(s[metric] <= limit for metric, limit in limits) for s in subnet_specs(run))
    assert len(subnet_specs(run)) == 1


def test_fine_tuning_starts_from_recalibrated_batchnorm(fmnist_npz, monkeypatch):
    config = SearchConfig(data=fmnist_npz, weights=str(SHIPPED), holdout=200, batch_size=64,
                                   calib_batches=2, score_images=200)
    data, _, space = load_workbench(config)
    evaluator = make_evaluator(config, data)
    ratios = space.uniform_ratios(0.5)
    pruned, _ = space.prune(ratios)
    recalibrated, _ = space.prune(ratios)
    evaluator.recalibrate(recalibrated)
    handed = {}

    class Started(Exception):
        pass

    def train(model, *args, **kwargs):  # what training starts from
        handed.update({name: value.clone() for name, value in model.state_dict().items()})
        raise Started

    monkeypatch.setattr(finetuning, "train", train)
    with pytest.raises(Started):
        finetuning.finetune(space.prune(ratios)[0], config, data, evaluator, seed=0)
    stats = [name for name in handed if name.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(handed[n], recalibrated.state_dict()[n]) for n in stats)
    assert not all(torch.equal(handed[n], pruned.state_dict()[n]) for n in stats)
