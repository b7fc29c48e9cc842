"""Does the adaptive-BN score rank candidates the way fine-tuning does? (EagleEye's central claim)

N candidates are drawn at one budget the way the ``random`` strategy draws them. Each is scored
without recalibration (vanilla) and with adaptive BN on 1..50 calibration batches, and (``--shortlist-sweep``)
by its held-out accuracy after a short fine-tune of each number of steps, the stage that multi-fidelity
selection (``--shortlist``) chooses by; then fine-tuned with two seeds. The seed-to-seed correlation of the
fine-tuned accuracies is the ceiling any score can reach; each score's correlation is reported against it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from itertools import combinations

import numpy as np
import pandas as pd

from autoprune.bench.common import BenchDir, figure
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.finetuning import finetune
from autoprune.measure import accuracy
from autoprune.search.allocation import draw_in_budget
from autoprune.train import epochs_of_steps
from autoprune.workbench import load_workbench, make_evaluator


def check(*, budget: str, candidates: int, finetune_seeds: int, calib_sweep: list[int],
          shortlist_sweep: list[int] = (), **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed
    budget, fewer than 3 candidates or 1 fine-tune seed, calibration-batch counts missing or below 1, or
    short fine-tunes of fewer than 1 step."""
    parse_budget(budget)
    if candidates < 3 or finetune_seeds < 1 or not calib_sweep or min(calib_sweep) < 1:
        raise UserError("fidelity needs at least 3 candidates, 1 fine-tune seed and calibration batch counts of 1 or more")
    if shortlist_sweep and min(shortlist_sweep) < 1:
        raise UserError("--shortlist-sweep: a short fine-tune takes at least 1 step")


def run(config: SearchConfig, bench: BenchDir, *, budget: str, candidates: int, finetune_epochs: float,
        finetune_seeds: int, calib_sweep: list[int], shortlist_sweep: list[int] = (),
        quiet: bool = False) -> pd.DataFrame:
    """Score ``candidates`` random candidates at ``budget`` without recalibration and by adaptive BN (EagleEye,
    Li et al. 2020) at each count of ``calib_sweep`` calibration batches and by the held-out accuracy after a
    short fine-tune of each count of ``shortlist_sweep`` steps (seed ``config.seed``), fine-tune each with
    ``finetune_seeds`` seeds; returns the table of correlations.csv.

    Per score (the seed-to-seed ceiling, vanilla, adaptive BN at each count): its Spearman and Pearson
    correlation with the mean fine-tuned test accuracy, each as a share of the ceiling, and the median
    seconds of one score. Also writes candidates.csv, the plots and summary.md.
    """
    config = replace(config, finetune_epochs=finetune_epochs)
    data, _, space = load_workbench(config)
    sweep = sorted(set(calib_sweep) | {config.calib_batches})
    scorer = make_evaluator(config, data, calib_batches=max(sweep), adaptive=True)
    recalibrator = make_evaluator(config, data, adaptive=True)  # what fine-tuning starts from, as in a search
    rng = np.random.default_rng([config.seed, 2020])
    drawn = [draw_in_budget(space, parse_budget(budget), config.tolerance, rng)[0] for _ in range(candidates)]
    seeds = [config.seed + 1 + j for j in range(finetune_seeds)]
    short = sorted(set(shortlist_sweep))
    tic, measured, rows = time.perf_counter(), 0, []
    for i, ratios in enumerate(drawn):
        key = f"candidate {i}"
        row = bench.done(key)
        if row is None:
            row = bench.record(key, _measure(config, data, space, scorer, recalibrator, ratios, sweep, short, seeds))
            measured += 1
            eta = (time.perf_counter() - tic) / measured * (candidates - i - 1)
            bench.log(f"candidate {i + 1}/{candidates}: vanilla {row['vanilla']:.1%}, adaptive "
                      f"{row[f'adaptive_{config.calib_batches}']:.1%}, fine-tuned "
                      + "/".join(f"{row[f'test_seed{s}']:.2%}" for s in seeds) + f" (about {eta / 60:.0f} min left)")
        rows.append({"candidate": i, **row})
    frame = pd.DataFrame(rows)
    frame["finetuned_mean"] = frame[[f"test_seed{s}" for s in seeds]].mean(axis=1)
    bench.write_csv("candidates.csv", frame)
    scores = _correlations(frame, seeds, sweep, short)
    bench.write_csv("correlations.csv", scores)
    _plot_scatter(bench, frame, scores, config.calib_batches, seeds)
    _plot_sweep(bench, scores)
    _summary(bench, config, frame, scores, budget=budget, seeds=seeds, data_name=data.name, space=space)
    return scores


def _measure(config, data, space, scorer, recalibrator, ratios, sweep, short, seeds) -> dict:
    cost = space.cost(ratios)
    subnet, _ = space.prune(ratios)
    row: dict = {"macs": cost.macs, "macs_pct": 100 * cost.macs / space.base_cost.macs, "params": cost.params,
                 "vanilla": scorer.holdout_accuracy(subnet)}
    for k in sweep:
        row[f"adaptive_{k}"] = scorer.score(subnet, calib_batches=k)
        row[f"adaptive_{k}_seconds"] = round(sum(scorer.last_seconds.values()), 4)
    for steps in short:  # the shortlist's stage: as finetuning.shortlist_phase trains and scores it
        subnet, _ = space.prune(ratios)
        result = finetune(subnet, config, data, recalibrator, seed=config.seed, quiet=True,
                          epochs=epochs_of_steps(steps, len(data.train), config.batch_size))
        row[f"short_{steps}"] = accuracy(subnet, data.holdout, device=config.device)
        row[f"short_{steps}_seconds"] = round(result.seconds, 2)
    for seed in seeds:
        subnet, _ = space.prune(ratios)
        result = finetune(subnet, config, data, recalibrator, seed=seed, quiet=True)
        row[f"test_seed{seed}"] = accuracy(subnet, data.test, device=config.device)
        row[f"finetune_seconds_seed{seed}"] = round(result.seconds, 2)
    row["ratios"] = {k: round(v, 4) for k, v in ratios.items()}
    return row


def _corr(a: pd.Series, b: pd.Series, method: str) -> float:
    """Pearson, or Spearman as the Pearson correlation of average ranks (ties share a rank)."""
    if method == "spearman":
        a, b = a.rank(), b.rank()
    return float(a.corr(b))


def _correlations(frame: pd.DataFrame, seeds: list[int], sweep: list[int], short: list[int]) -> pd.DataFrame:
    target = frame["finetuned_mean"]
    pairs = list(combinations(seeds, 2))
    ceiling = {m: float(np.mean([_corr(frame[f"test_seed{a}"], frame[f"test_seed{b}"], m) for a, b in pairs]))
               for m in ("spearman", "pearson")} if pairs else {"spearman": np.nan, "pearson": np.nan}
    rows = [{"score": "seed-to-seed (ceiling)", "calib_batches": np.nan, **ceiling, "seconds": np.nan}]
    rows.append({"score": "vanilla", "calib_batches": 0,
                 "spearman": _corr(frame["vanilla"], target, "spearman"),
                 "pearson": _corr(frame["vanilla"], target, "pearson"), "seconds": np.nan})
    for k in sweep:
        rows.append({"score": f"adaptive BN, {k} batches", "calib_batches": k,
                     "spearman": _corr(frame[f"adaptive_{k}"], target, "spearman"),
                     "pearson": _corr(frame[f"adaptive_{k}"], target, "pearson"),
                     "seconds": frame[f"adaptive_{k}_seconds"].median()})
    for steps in short:
        rows.append({"score": f"short fine-tune, {steps} steps", "calib_batches": np.nan,
                     "spearman": _corr(frame[f"short_{steps}"], target, "spearman"),
                     "pearson": _corr(frame[f"short_{steps}"], target, "pearson"),
                     "seconds": frame[f"short_{steps}_seconds"].median()})
    scores = pd.DataFrame(rows)
    for m in ("spearman", "pearson"):
        scores[f"{m}_of_ceiling"] = scores[m] / ceiling[m]
    return scores


def _plot_scatter(bench: BenchDir, frame: pd.DataFrame, scores: pd.DataFrame, calib: int, seeds: list[int]) -> None:
    fig, axes = figure(2, width=5.5)
    low = frame[[f"test_seed{s}" for s in seeds]].min(axis=1)
    high = frame[[f"test_seed{s}" for s in seeds]].max(axis=1)
    mean = frame["finetuned_mean"]
    for ax, column, label in ((axes[0][0], "vanilla", "vanilla evaluation"),
                              (axes[0][1], f"adaptive_{calib}", f"adaptive BN ({calib} batches)")):
        row = scores[scores["score"] == ("vanilla" if column == "vanilla" else f"adaptive BN, {calib} batches")].iloc[0]
        ax.errorbar(100 * frame[column], 100 * mean, yerr=[100 * (mean - low), 100 * (high - mean)], fmt="o",
                    markersize=4, alpha=0.8, capsize=2)
        ax.set_xlabel(f"{label}: proxy accuracy (%)")
        ax.set_ylabel("fine-tuned test accuracy (%, seed mean and range)")
        ax.set_title(f"Spearman {row['spearman']:.2f}, Pearson {row['pearson']:.2f}")
        ax.grid(alpha=0.3)
    bench.save_figure(fig, "scatter.png")


def _plot_sweep(bench: BenchDir, scores: pd.DataFrame) -> None:
    sweep = scores[scores["calib_batches"] > 0]
    ceiling = scores.iloc[0]
    fig, axes = figure(1)
    ax = axes[0][0]
    for m, colour in (("spearman", "tab:blue"), ("pearson", "tab:green")):
        ax.plot(sweep["calib_batches"], sweep[m], "-o", color=colour, label=m)
        if np.isfinite(ceiling[m]):
            ax.axhline(ceiling[m], color=colour, linestyle=":", label=f"{m} seed-to-seed ceiling")
    ax.set_xscale("log")
    ax.set_xlabel("calibration batches")
    ax.set_ylabel("correlation with fine-tuned accuracy")
    ax.set_ylim(min(0.0, float(sweep[["spearman", "pearson"]].min().min())) - 0.05, 1.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    seconds = ax.twinx()
    seconds.plot(sweep["calib_batches"], sweep["seconds"], "--s", color="tab:red", alpha=0.6)
    seconds.set_ylabel("seconds per score (median)", color="tab:red")
    bench.save_figure(fig, "calibration_sweep.png")


def _summary(bench, config, frame, scores, *, budget, seeds, data_name, space) -> None:
    seed_cols = [f"test_seed{s}" for s in seeds]
    noise = (frame[seed_cols].max(axis=1) - frame[seed_cols].min(axis=1)).mean() if len(seeds) > 1 else np.nan
    spread = frame["finetuned_mean"]
    shown = scores.copy()
    for c in ("spearman", "pearson", "spearman_of_ceiling", "pearson_of_ceiling"):
        shown[c] = shown[c].map(lambda v: f"{v:.2f}")
    shown["seconds"] = shown["seconds"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    shown["calib_batches"] = shown["calib_batches"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    sweep = scores[(scores["calib_batches"] > 0) & scores["spearman"].notna()]
    enough = ""
    if len(sweep):
        row = sweep[sweep["spearman"] >= sweep["spearman"].max() - 0.05].iloc[0]
        enough = (f"The fewest calibration batches whose Spearman correlation is within 0.05 of the best: "
                  f"{int(row['calib_batches'])} ({row['seconds']:.2f} s per score).")
    stages = scores[scores["score"].str.startswith("short fine-tune")]
    if len(stages):
        enough += " Short fine-tunes (the --shortlist stage), Spearman as a share of the ceiling: " + ", ".join(
            f"{r.score.removeprefix('short fine-tune, ')} {r.spearman_of_ceiling:.2f} ({r.seconds:.1f} s)"
            for r in stages.itertuples()) + "."
    body = f"""
{len(frame)} candidates of {config.model} on {data_name} at {budget} ({frame['macs'].mean() / space.base_cost.macs:.1%} of
baseline MACs on average), drawn like the `random` strategy's. Each was scored without recalibration
(vanilla) and with adaptive BN, then fine-tuned for {config.finetune_epochs} epochs (lr {config.finetune_lr}) with
seeds {', '.join(map(str, seeds))}; correlations are against the seed-mean test accuracy.

| score | calibration batches | Spearman | Pearson | Spearman / ceiling | Pearson / ceiling | seconds per score |
|---|---:|---:|---:|---:|---:|---:|
""" + "\n".join(
        f"| {r.score} | {r.calib_batches} | {r.spearman} | {r.pearson} | {r.spearman_of_ceiling} | "
        f"{r.pearson_of_ceiling} | {r.seconds} |" for r in shown.itertuples()
    ) + f"""

{enough}

Fine-tuned accuracy over candidates: {spread.min():.2%} to {spread.max():.2%} (std {spread.std() * 100:.2f} pp);
the two seeds of one candidate differ by {noise * 100:.2f} pp on average (the fine-tuning noise).
Proxy accuracy before fine-tuning: vanilla {frame['vanilla'].min():.1%} to {frame['vanilla'].max():.1%},
adaptive BN ({config.calib_batches} batches) {frame[f'adaptive_{config.calib_batches}'].min():.1%} to
{frame[f'adaptive_{config.calib_batches}'].max():.1%}.

![proxy vs fine-tuned accuracy](scatter.png)

![correlation and cost vs calibration batches](calibration_sweep.png)

Files: candidates.csv (per candidate: cost, every score, each seed's fine-tuned test accuracy,
ratios), correlations.csv.
"""
    bench.write_summary("Fidelity of the adaptive-BN score", body)
