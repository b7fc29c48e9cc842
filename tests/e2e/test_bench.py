"""Smoke tests of every ``autoprune bench`` study on the tiny data: each runs end to end through
the CLI, writes its files, and its figures obey what the study measures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from quick import QUICK_FLAGS, QUICK_OPTIONS

from autoprune.bench.common import width_rule
from autoprune.bench.efficiency import parse_label
from autoprune.cli import main
from autoprune.errors import UserError


@pytest.fixture
def bench_args(tiny_npz, tiny_weights):
    def args(study: str, out, *extra: str) -> list[str]:
        return ["bench", study, "--data", tiny_npz, "--weights", tiny_weights, "--holdout", "120",
                "--batch-size", "64", "--calib-batches", "2", "--score-images", "120", "--quiet",
                *QUICK_FLAGS, "--out", str(out), *extra]

    return args


def _timings(values: pd.Series) -> bool:
    """Measured times are there, finite and not negative. How large they are depends on the machine
    (a random ranking takes 0.000 s at 3 decimals), so no test asserts more of them."""
    return len(values) > 0 and values.notna().all() and values.between(0, math.inf).all()


def _journal(out) -> list[str]:
    return [json.loads(line)["key"] for line in (out / "journal.jsonl").read_text().splitlines()]


def test_fidelity(bench_args, tmp_path, one_thread):
    out = tmp_path / "fidelity"
    args = bench_args("fidelity", out, "--candidates", "3", "--finetune-epochs", "0.1", "--calib-sweep", "1,3",
                      "--shortlist-sweep", "2")
    assert main(args) == 0
    candidates = pd.read_csv(out / "candidates.csv")
    assert len(candidates) == 3
    assert candidates["macs_pct"].between(45, 50).all()  # in the budget band, as the random strategy draws
    assert candidates[["test_seed1", "test_seed2"]].stack().between(0, 1).all()
    scores = pd.read_csv(out / "correlations.csv")
    assert list(scores["score"]) == ["seed-to-seed (ceiling)", "vanilla", "adaptive BN, 1 batches",
                                     "adaptive BN, 2 batches", "adaptive BN, 3 batches", "short fine-tune, 2 steps"]
    assert candidates["short_2"].between(0, 1).all()  # held-out accuracy after 2 steps of training
    assert "Short fine-tunes (the --shortlist stage)" in (out / "summary.md").read_text()
    assert _timings(scores["seconds"].dropna())
    for name in ("scatter.png", "calibration_sweep.png", "summary.md", "bench.json"):
        assert (out / name).stat().st_size > 0
    assert f"Command: `autoprune bench fidelity --data {args[3]}" in (out / "summary.md").read_text()

    # a finished study resumes without redoing any work; other settings are refused
    keys = _journal(out)
    assert main(args + ["--resume"]) == 0
    assert _journal(out) == keys
    assert main(args) == 2  # already there, no --resume
    assert main([a if a != "3" else "4" for a in args] + ["--resume"]) == 2


@pytest.mark.slow
def test_efficiency(bench_args, tmp_path, one_thread):
    out = tmp_path / "efficiency"
    labels = ["random+halving", "tpe-bounded+none@3"]
    # a tight budget, so that the candidates of the tiny data score apart (at 50% every one scores 100%)
    assert main(bench_args("efficiency", out, "--strategies", ",".join(labels), "--trials", "4", "--budget", "25%flops",
                           "--seeds", "2", "--overhead-candidates", "2")) == 0
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["strategy"]) == set(labels)
    for _, c in curves.groupby("strategy"):
        assert list(c["trial"]) == [1, 2, 3, 4]
        assert c["mean"].is_monotonic_increasing  # best so far never falls
        assert (c["count"] == 2).all()  # every seed ran
    speed = pd.read_csv(out / "throughput.csv").set_index("strategy")
    assert speed.loc["tpe-bounded+none@3", "scored"] == 8 and speed.loc["tpe-bounded+none@3", "stopped"] == 0
    parts = ["ask", "cost", "prune", "recalibrate", "evaluate", "bookkeeping"]
    assert np.allclose(speed[[f"{p}_seconds" for p in parts]].sum(axis=1), speed["seconds_per_scored"])
    # each label ran with its pruner; successive halving stopped some scores, which never count toward the best
    configs = {label: (out / "runs" / f"{label}-s0" / "config.yaml").read_text() for label in labels}
    assert "pruner: none" in configs["tpe-bounded+none@3"] and "pruner: halving" in configs["random+halving"]
    assert "calib_batches: 3" in configs["tpe-bounded+none@3"] and "calib_batches: 2" in configs["random+halving"]
    trials = pd.read_csv(out / "trials.csv")
    stopped = trials[trials["state"] == "stopped"]
    assert len(stopped) > 0 and set(stopped["strategy"]) == {"random+halving"}
    assert (stopped["scored_images"] < 120).all()
    complete = trials["proxy_acc"].where(trials["state"] == "complete").fillna(0.0)
    assert (trials["best_so_far"] == complete.groupby([trials["strategy"], trials["seed"]]).cummax()).all()
    by_time = pd.read_csv(out / "curves_by_time.csv")
    assert set(by_time["strategy"]) == set(labels) and (by_time["fraction_of_reference"] == 1.0).sum() == 2
    for _, c in by_time.groupby("strategy"):
        assert c.sort_values("seconds")["mean"].is_monotonic_increasing
    overhead = next(json.loads(line)["value"] for line in (out / "journal.jsonl").read_text().splitlines()
                if json.loads(line)["key"] == "overhead")
    assert 0 <= overhead["overhead"] < math.inf  # a ratio of two timings: its size is the study's finding, not a test's
    assert _timings(speed["cost_seconds"])  # the exact cost count, timed after the searches
    assert (out / "runs" / "sensitivity" / "sensitivity.csv").exists()
    # the bounded runs reused the one sensitivity measurement
    for seed in (0, 1):
        config = (out / "runs" / f"tpe-bounded+none@3-s{seed}" / "config.yaml").read_text()
        assert "sensitivity_from:" in config and "runs/sensitivity" in config
    summary = (out / "summary.md").read_text()
    assert "overhead" in summary and "trials to reach random+halving's best" in summary
    # the candidate each run would pick at equal times, scored again on one scale: 20 batches, every image
    rescored = pd.read_csv(out / "rescored.csv")
    assert set(rescored["fraction_of_reference"]) <= {0.25, 0.5, 1.0} and len(rescored) >= 4
    assert rescored["reference_proxy_acc"].between(0, 1).all()
    final = rescored[rescored["fraction_of_reference"] == 1.0].merge(
        trials[trials["state"] == "complete"], left_on=["strategy", "seed", "number"],
        right_on=["strategy", "seed", "number"])
    assert (final["own_proxy_acc"] == final["proxy_acc"]).all()  # the pick is a complete trial of that run


def test_an_efficiency_label_is_a_strategy_with_its_pruner_and_calibration():
    assert parse_label("tpe", "halving", 1) == ("tpe", "halving", 1)  # a bare one: the study's own
    assert parse_label("tpe+none", "halving", 1) == ("tpe", "none", 1)
    assert parse_label("tpe-bounded+median@20", "halving", 1) == ("tpe-bounded", "median", 20)
    assert parse_label("random@5", "none", 1) == ("random", "none", 5)
    with pytest.raises(UserError, match="after @ must be a positive integer"):
        parse_label("tpe@0", "none")


def test_baselines(bench_args, tmp_path, one_thread, flops_clock):
    out = tmp_path / "baselines"
    # on the FLOPs clock (one ms per MFLOP), so that the latency budget's verdicts do not rest on this machine
    args = bench_args("baselines", out, "--budgets", "50%flops,60%latency", "--trials", "3", "--finetune-epochs", "0.1",
                      "--latency-batches", "1")
    assert main(args) == 0
    table = pd.read_csv(out / "baselines.csv").set_index(["budget", "method"])
    assert set(table.index) == {("100%", "unpruned"), ("60%latency", "uniform wider")} | {
        (b, m) for b in ("50%flops", "60%latency") for m in ("searched", "uniform", "global")}
    assert table.loc[("100%", "unpruned"), "macs_pct"] == 100
    assert table.loc[("100%", "unpruned"), "speedup_b1"] == 1.0
    for method in ("searched", "uniform", "global"):
        assert 40.0 <= table.loc[("50%flops", method), "macs_pct"] <= 50.0  # each uses most of the budget
        # the latency budget, predicted for each method, holds as measured beside the unpruned model: a
        # speedup of 1 / 0.6 or more, and not far beyond it (each uses most of the budget)
        assert 1 / 0.6 * 0.97 <= table.loc[("60%latency", method), "speedup_b1"] <= 2.3
    # at the latency budget uniform and global are matched to the searched subnet's measured latency: each the
    # least-pruned of its family that runs no slower than it (on the FLOPs clock, within a step of a bisection)
    searched = table.loc[("60%latency", "searched"), "speedup_b1"]
    for method in ("uniform", "global"):
        assert searched <= table.loc[("60%latency", method), "speedup_b1"] <= 1.02 * searched
    # and the uniform subnet one step wider, measured slower than the searched one: the two bracket its latency
    assert table.loc[("60%latency", "uniform wider"), "speedup_b1"] < searched
    assert table.loc[("60%latency", "uniform wider"), "macs"] > table.loc[("60%latency", "uniform"), "macs"]
    assert "matched to the searched subnet's measured latency" in " ".join((out / "summary.md").read_text().split())
    assert (table["seeds"] == 2).all()
    assert _timings(table["latency_b1_ms"])
    assert (table["speedup_b1_low"] <= table["speedup_b1"]).all() and (table["speedup_b1"] <= table["speedup_b1_high"]).all()
    summary = (out / "summary.md").read_text()
    assert "- 60%latency: searched vs uniform" in summary and "x measured" in summary
    # each budget's three methods keep the rule that budget's search set up
    rules = {b: json.loads((out / "runs" / f"search-{b.replace('%', 'pct')}" / "latency.json").read_text())
             for b in ("50%flops", "60%latency")}
    text = " ".join(summary.split())
    assert "search set up on the target at batch 1 (50%flops: " in text
    for b, rule in rules.items():
        assert f"{b}: {width_rule(rule['multiple'], rule['widths'])}" in text
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 16 and runs["test_acc"].between(0, 1).all()

    # a study timed before it had an arm (as one from before `uniform wider`) times that arm on its own on resume
    journal = out / "journal.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    for entry in entries:
        if entry["key"] == "latency":
            del entry["value"]["models"]["60%latency uniform wider"]
    journal.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    assert main(args + ["--resume"]) == 0
    assert _journal(out)[len(entries):] == ["latency of 60%latency uniform wider"]
    again = pd.read_csv(out / "baselines.csv").set_index(["budget", "method"])
    assert again.loc[("60%latency", "uniform wider"), "speedup_b1"] == table.loc[("60%latency", "uniform wider"), "speedup_b1"]


def test_the_searched_subnet_is_the_one_its_search_scored_whatever_widths_the_study_keeps(tiny_npz, tiny_weights,
                                                                                          tmp_path, one_thread):
    from autoprune.bench.common import BenchDir, best_searched
    from autoprune.config import SearchConfig
    from autoprune.measure.count import count_cost
    from autoprune.workbench import load_workbench

    config = SearchConfig(model="resnet20", data=tiny_npz, weights=tiny_weights, holdout=120, batch_size=64,
                          calib_batches=2, score_images=120, **QUICK_OPTIONS)  # the search keeps every width
    _, _, space = load_workbench(config)
    # the study's own set-up kept other widths (as another rounding would): multiples of 8
    study_widths = {g.name: [w for w in range(8, g.channels, 8)] for g in space.groups}
    space.keep_widths(study_widths)
    bench = BenchDir(tmp_path / "study", "speedup", {}, resume=False, command="test")
    best = best_searched(config, bench, space, "50%flops", quiet=True, strategy="random", trials=3)
    assert count_cost(best.model, space.example_input).macs == best.row["macs"]  # what the search scored
    with space.widths_of(None):
        searched = space.kept_channels(best.ratios)
    assert any(w % 8 for w in searched.values())  # widths the study's rule would have snapped elsewhere
    assert searched == {g: best.model.get_submodule(g).out_channels for g in space.group_names}
    assert [g.widths for g in space.groups] == [sorted({*study_widths[g.name], g.channels}) for g in space.groups]
    # the search ran as a search with the defaults does (a shortlist of twice the three fine-tunes), fine-tuned
    # nothing itself, and the study takes the candidate its shortlist chose
    (spec,) = (best.run_dir / "subnets").glob("*/spec.json")
    spec = json.loads(spec.read_text())
    assert spec["finetune_epochs"] == 0 and best.row["number"] == spec["trial"]
    shortlist = pd.read_csv(best.run_dir / "shortlist.csv")
    trials = pd.read_csv(best.run_dir / "trials.csv")
    assert len(shortlist) == ((trials["state"] == "complete") & trials["same_as"].isna()).sum() >= 2
    assert shortlist.loc[shortlist["finetuned"], "number"].tolist() == [spec["trial"]]


def test_the_next_wider_subnet_is_one_measured_step_and_never_the_unpruned_end():
    from torch import nn

    from autoprune.bench.baselines import MATCH_STEPS, next_wider

    high = 0.6
    step = high / 2**MATCH_STEPS  # 0.00234375: the journal keeps 0.002344, just above one step
    built = []

    def build(x):  # a family whose subnets narrow as the ratio grows
        built.append(x)
        return nn.Linear(2, 4 if x < 0.005 else 3)

    matched = nn.Linear(2, 3)
    assert next_wider(build, round(step, 6), high, matched) is None  # the lower end is ratio 0, never measured
    assert next_wider(build, None, high, None) is None  # nothing matched
    wider = next_wider(build, round(3 * step, 6), high, matched)
    assert wider.out_features == 4 and built == [pytest.approx(2 * step, abs=1e-6)]
    assert next_wider(build, round(4 * step, 6), high, matched) is None  # one step wider builds the matched subnet


def test_the_baselines_keep_the_width_rule_they_are_given(tiny_npz, tiny_weights, one_thread):
    from autoprune.bench.baselines import heuristic_subnets
    from autoprune.budget import parse_budget
    from autoprune.config import SearchConfig
    from autoprune.measure.count import count_cost
    from autoprune.workbench import load_workbench

    config = SearchConfig(model="resnet20", data=tiny_npz, weights=tiny_weights, holdout=120, batch_size=64,
                          calib_batches=2, score_images=120, **QUICK_OPTIONS)
    _, _, space = load_workbench(config)
    budget = parse_budget("30%flops")
    own = [g.widths for g in space.groups]

    def kept(model):
        return {g: model.get_submodule(g).out_channels for g in space.group_names}

    # a search's rule: multiples of 8, and in one group only some of them (as the efficient widths keep)
    rule = {g.name: list(range(8, g.channels, 8)) for g in space.groups}
    rule[space.group_names[-1]] = [16, 40]
    made = heuristic_subnets(space, budget, 8, rule)
    assert all(w in {*rule[g.name], g.channels} for g, w in zip(space.groups, kept(made.uniform).values()))
    # global cannot reach 30% in multiples of 8 (a 16-channel group keeps 8 at the space's largest ratio, 0.7):
    # it rounds to the next smaller multiple that can
    assert made.global_multiple == 4 and all(w % 4 == 0 for w in kept(made.global_).values())
    for model in (made.uniform, made.global_):
        assert budget.feasible(count_cost(model, space.example_input), space.base_cost)
    # at 50% both keep multiples of 8 under the rule, and other widths under every width: the rule made them so
    half = parse_budget("50%flops")
    ruled, free = heuristic_subnets(space, half, 8, rule), heuristic_subnets(space, half, None, None)
    assert ruled.global_multiple == 8 and free.global_multiple == 1
    for ruled_model, free_model in ((ruled.uniform, free.uniform), (ruled.global_, free.global_)):
        assert all(w % 8 == 0 for w in kept(ruled_model).values())
        assert any(w % 8 for w in kept(free_model).values())
    assert [g.widths for g in space.groups] == own  # the space's own widths are back


def test_speedup(bench_args, tmp_path, one_thread, flops_clock):
    out = tmp_path / "speedup"
    # eager PyTorch on the FLOPs clock (one ms per MFLOP): onnxruntime's passes are not PyTorch's to count
    assert main(bench_args("speedup", out, "--budgets", "50%flops", "--trials", "2", "--latency-budget", "90%latency",
                           "--latency-batches", "1,16", "--target", "torch", "--widths", "efficient")) == 0
    frame = pd.read_csv(out / "speedup.csv").set_index("model")
    assert list(frame.index) == ["unpruned", "50%flops uniform", "50%flops searched", "50%flops global",
                                 "90%latency searched"]
    assert frame.loc["unpruned", "speedup_b1"] == 1.0
    assert (frame.loc[["50%flops uniform", "50%flops searched", "50%flops global"], "macs_reduction"] > 1.9).all()
    # on the FLOPs clock a pass takes its FLOPs: the speedup is the FLOP reduction, in every round
    for method in ("uniform", "searched", "global"):
        row = frame.loc[f"50%flops {method}"]
        assert row["speedup_b16"] == row["speedup_b16_low"] == row["speedup_b16_high"] > 1.9
    # the 50%flops search's rule, which its three subnets keep
    rule = json.loads((out / "runs" / "search-50pctflops" / "latency.json").read_text())
    assert rule["multiple"] in (1, 4, 8, 16)
    assert f"50%flops: {width_rule(rule['multiple'], rule['widths'])}" in " ".join((out / "summary.md").read_text().split())
    assert frame.loc["90%latency searched", "macs_reduction"] > 1  # how much depends on the timings
    assert _timings(frame["predicted_b16_ms"].dropna())
    assert (out / "speedup.png").stat().st_size > 0


def test_granularity(bench_args, tmp_path, one_thread):
    out = tmp_path / "granularity"
    assert main(bench_args("granularity", out, "--budgets", "50%params,30%params", "--latency-batches", "1")) == 0
    frame = pd.read_csv(out / "granularity.csv").set_index("model")
    assert list(frame.index) == ["unpruned", "50%params filter", "50%params weight", "30%params filter",
                                 "30%params weight"]
    for budget in ("50%params", "30%params"):
        filt, weight = frame.loc[f"{budget} filter"], frame.loc[f"{budget} weight"]
        assert abs(weight["params"] - filt["params"]) <= 1  # equal parameter counts
        assert weight["dense_macs_pct"] == 100 and filt["dense_macs_pct"] == filt["macs_pct"] < 100
    assert frame["proxy_acc"].between(0, 1).all()
    assert (out / "granularity.png").stat().st_size > 0 and "Weight vs filter" in (out / "summary.md").read_text()
    # --amp off is not recorded, so that studies recorded before the option existed resume
    assert "amp" not in json.loads((out / "bench.json").read_text())["settings"]


def test_bench_errors(bench_args, tmp_path, capsys):
    assert main(bench_args("efficiency", tmp_path / "e", "--strategies", "annealing")) == 2
    assert "--strategies: unknown ['annealing']" in capsys.readouterr().err
    assert main(bench_args("efficiency", tmp_path / "e", "--strategies", "tpe+hyperband")) == 2
    assert "--strategies: unknown ['tpe+hyperband']" in capsys.readouterr().err
    assert main(bench_args("speedup", tmp_path / "s", "--budgets", "8ms")) == 2
    assert main(bench_args("fidelity", tmp_path / "f", "--resume")) == 2
    assert "holds no benchmark" in capsys.readouterr().err


def test_criteria(bench_args, tmp_path, one_thread):
    out = tmp_path / "criteria"
    assert main(bench_args("criteria", out, "--criteria", "l1,taylor,random", "--trials", "2",
                           "--finetune-epochs", "0.05", "--finetune-seeds", "1")) == 0
    table = pd.read_csv(out / "criteria.csv")
    assert list(zip(table["criterion"], table["ratios"])) == [
        (c, k) for c in ("l1", "taylor", "random") for k in ("uniform", "searched")]
    for kind, group in table.groupby("ratios"):
        assert group["macs_pct"].nunique() == 1  # the same widths for every criterion
    assert _timings(table["ranking_seconds"]) and table["test_mean"].between(0, 1).all()
    assert (out / "criteria.png").stat().st_size > 0 and "taylor" in (out / "summary.md").read_text()


def test_retrain(bench_args, tmp_path, one_thread):
    out = tmp_path / "retrain"
    args = [a for a in bench_args("retrain", out, "--base-epochs", "2", "--finetune-epochs", "0.1",
                                  "--finetune-seeds", "1") if a]
    weights = args.index("--weights")
    del args[weights : weights + 2]  # the study trains its own baseline, keeping its initialisation
    assert main(args) == 0
    table = pd.read_csv(out / "retrain.csv").set_index("method")
    assert list(table.index) == ["fine-tune", "lottery (init)", "lottery (epoch 1)", "scratch-e", "scratch-b"]
    assert table.loc["scratch-b", "epochs"] > 1.5 * table.loc["scratch-e", "epochs"]  # the compute of the unpruned net
    assert (out / "baseline" / "model.init.pt").is_file() and (out / "baseline" / "model.epoch1.pt").is_file()
    assert table["test_mean"].between(0, 1).all() and "Scratch-B" in (out / "summary.md").read_text()
    # a clone of committed results has the journal but not the weights: resuming trains them again
    for weights in (out / "baseline").glob("*.pt"):
        weights.unlink()
    assert main(args + ["--resume"]) == 0
    assert (out / "baseline" / "model.pt").is_file() and (out / "baseline" / "model.epoch1.pt").is_file()


@pytest.mark.slow
def test_deploy(bench_args, tmp_path, one_thread):
    out = tmp_path / "deploy"
    assert main(bench_args("deploy", out, "--budgets", "50%flops", "--latency-batches", "1,4", "--round-to", "4")) == 0
    frame = pd.read_csv(out / "deploy.csv").set_index("model")
    assert list(frame.index) == ["unpruned", "50%flops round_to 1", "50%flops round_to 4"]
    rounded = frame.loc["50%flops round_to 4"]
    assert all(int(w) % 4 == 0 for w in rounded["conv_widths"].split())
    assert (frame.loc[["50%flops round_to 1", "50%flops round_to 4"], "macs_pct"] <= 50).all()
    for runtime in ("pytorch", "torch-export", "torch-export NCHW", "onnxruntime"):
        assert _timings(frame[[f"{runtime}_b1_ms", f"{runtime}_b4_ms"]].stack())
        assert frame.loc["unpruned", f"{runtime}_b4_speedup"] == 1.0
    assert (frame["max_abs_diff"] < 1e-3).all() and frame["proxy_acc"].between(0, 1).all()
    assert "onnxruntime b4 ms" in (out / "summary.md").read_text() and (out / "deploy.png").stat().st_size > 0
    assert not list(out.glob("**/*.onnx"))  # the exports stay out of the results
