"""Is a searched subnet better than the simple ways to the same budget?

At each budget four models are fine-tuned alike (same epochs, learning rate and seeds, BN
recalibrated first): the best candidate of a search (adaptive-BN proxy), uniform per-group ratios
ranked by the same criterion, Torch-Pruning's global magnitude pruning (L1, one threshold across
groups, bisected to the same budget), and the unpruned model.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pandas as pd
import torch_pruning as tp
from torch import nn

from autoprune.bench.common import (
    BenchDir,
    best_searched,
    figure,
    finetuned_accuracy,
    measure_latencies,
)
from autoprune.budget import Budget, parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.measure.count import count_cost
from autoprune.pruning.space import PruningSpace
from autoprune.search import list_strategies
from autoprune.search.allocation import bisect_budget, uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator

METHODS = ("searched", "uniform", "global", "unpruned")


def check(*, budgets: list[str], strategy: str, trials: int, finetune_seeds: int, latency_batches: list[int], **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed budget,
    an unknown strategy, no budgets or latency batches, or trials, seeds or batch sizes below 1."""
    for text in budgets:
        parse_budget(text)
    if strategy not in list_strategies():
        raise UserError(f"--strategy: unknown '{strategy}' (choose from {', '.join(list_strategies())})")
    if not budgets or finetune_seeds < 1 or trials < 1 or not latency_batches or min(latency_batches) < 1:
        raise UserError("baselines needs a budget, a trial, a fine-tune seed and latency batch sizes of 1 or more")


def run(config: SearchConfig, bench: BenchDir, *, budgets: list[str], strategy: str, trials: int,
        finetune_epochs: float, finetune_seeds: int, latency_batches: list[int], quiet: bool = False) -> pd.DataFrame:
    """Fine-tune the searched, uniform, global-magnitude and unpruned models alike at each budget, with
    ``finetune_seeds`` seeds; returns the table of baselines.csv.

    Per budget and method: MACs of one sample, MACs as % of the unpruned model, params, the adaptive-BN proxy
    accuracy and the test accuracy's mean, min and max over the seeds (fractions in [0, 1]), and the
    latency in ms at each of ``latency_batches``. A method that cannot meet a budget is skipped. Also
    writes runs.csv (per seed), baselines.png and summary.md, and journals every unit of work in ``bench``.
    """
    parsed = {b: parse_budget(b) for b in budgets}
    config = replace(config, finetune_epochs=finetune_epochs)
    data, _, space = load_workbench(config)
    evaluator = make_evaluator(config, data)
    seeds = [config.seed + 1 + j for j in range(finetune_seeds)]
    arms: list[tuple[str, str, nn.Module | None]] = [("100%", "unpruned", copy.deepcopy(space.model))]
    for text, budget in parsed.items():
        best = best_searched(config, bench, space, text, quiet=quiet, strategy=strategy, trials=trials)
        arms.append((text, "searched", None if best is None else space.prune(best[0])[0]))
        uniform = uniform_at_budget(space, budget)
        arms.append((text, "uniform", None if uniform is None else space.prune(uniform)[0]))
        arms.append((text, "global", _global_magnitude(space, budget)))
    skipped = [f"{text} {method}" for text, method, model in arms if model is None]
    for name in skipped:
        bench.log(f"{name}: cannot meet the budget, skipped")
    arms = [(text, method, model) for text, method, model in arms if model is not None]
    latency = bench.done("latency") or bench.record("latency", measure_latencies(
        {f"{text} {method}": model for text, method, model in arms}, data.input_shape, latency_batches, config.device))
    rows = []
    for text, method, model in arms:
        arm = bench.done(f"{text} {method}")
        if arm is None:
            cost = count_cost(model, space.example_input)
            arm = bench.record(f"{text} {method}", {"macs": cost.macs, "params": cost.params,
                                                    "proxy_acc": evaluator.score(copy.deepcopy(model))})
        for seed in seeds:
            key = f"{text} {method} seed {seed}"
            result, trained = finetuned_accuracy(bench, key, model, config, data, evaluator, seed=seed)
            if trained:
                bench.log(f"{key}: {result['test_acc']:.2%} after {finetune_epochs} epochs")
            rows.append({"budget": text, "method": method, "seed": seed, **arm,
                         **{f"latency_b{b}_ms": latency[f"{text} {method}"][str(b)] for b in latency_batches}, **result})
    runs = pd.DataFrame(rows)
    runs["macs_pct"] = 100 * runs["macs"] / space.base_cost.macs
    bench.write_csv("runs.csv", runs)
    table = _table(runs)
    bench.write_csv("baselines.csv", table)
    _plot(bench, table)
    _summary(bench, config, table, seeds, strategy, trials, latency_batches)
    return table


def _global_magnitude(space: PruningSpace, budget: Budget, round_to: int = 1) -> nn.Module | None:
    """Torch-Pruning's MagnitudePruner (L1, global threshold), its ratio bisected to the budget, every width
    rounded to a multiple of ``round_to``.

    Each group may lose at most the space's largest ratio, and the classifier is kept, as in the
    search. None when the budget needs latency (no model for it here) or cannot be met.
    """
    if budget.needs_latency:
        return None
    base = space.base_cost
    cap = max(g.high for g in space.groups)

    def pruned(ratio: float) -> nn.Module:
        model = copy.deepcopy(space.model)
        modules = dict(model.named_modules())
        ignored = [modules[n] for n in (space.classifier, *space.unprunable) if n in modules]
        pruner = tp.pruner.MagnitudePruner(model, space.example_input, importance=tp.importance.MagnitudeImportance(p=1),
                                           global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=cap,
                                           ignored_layers=ignored, round_to=round_to if round_to > 1 else None)
        pruner.step()
        return model

    def fits(model: nn.Module) -> bool:
        return budget.feasible(count_cost(model, space.example_input), base)

    found = bisect_budget(pruned, fits, 0.0, cap, iterations=14)
    return None if found is None else found[1]


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    latency = [c for c in runs if c.startswith("latency_b")]
    grouped = runs.groupby(["budget", "method"], sort=False)
    table = grouped.agg(macs=("macs", "first"), macs_pct=("macs_pct", "first"), params=("params", "first"),
                        proxy_acc=("proxy_acc", "first"), test_mean=("test_acc", "mean"), test_min=("test_acc", "min"),
                        test_max=("test_acc", "max"), seeds=("seed", "count"),
                        **{c: (c, "first") for c in latency}).reset_index()
    return table


def _plot(bench: BenchDir, table: pd.DataFrame) -> None:
    fig, axes = figure(1, width=7.0)
    ax = axes[0][0]
    base = table[table["method"] == "unpruned"]
    if len(base):
        b = base.iloc[0]
        ax.axhspan(100 * b["test_min"], 100 * b["test_max"], color="grey", alpha=0.2)
        ax.axhline(100 * b["test_mean"], color="grey", linestyle="--", label="unpruned (fine-tuned alike)")
    for method, marker in (("searched", "o"), ("uniform", "s"), ("global", "^")):
        t = table[table["method"] == method].sort_values("macs_pct")
        if len(t):
            ax.errorbar(t["macs_pct"], 100 * t["test_mean"],
                        yerr=[100 * (t["test_mean"] - t["test_min"]), 100 * (t["test_max"] - t["test_mean"])],
                        fmt=f"-{marker}", capsize=3, label=method)
    ax.set_xlabel("MACs (% of the unpruned model)")
    ax.set_ylabel("test accuracy (%; mean and range over fine-tune seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    bench.save_figure(fig, "baselines.png")


def _summary(bench, config, table, seeds, strategy, trials, latency_batches) -> None:
    lat_cols = [f"latency_b{b}_ms" for b in latency_batches]
    lines = ["| budget | method | MACs (M) | MACs % | params (M) | proxy before fine-tuning | test accuracy (mean, range) | "
             + " | ".join(f"latency b{b} (ms)" for b in latency_batches) + " |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(lat_cols)]
    for r in table.itertuples():
        lines.append(f"| {r.budget} | {r.method} | {r.macs / 1e6:.2f} | {r.macs_pct:.1f} | {r.params / 1e6:.3f} | "
                     f"{r.proxy_acc:.2%} | {r.test_mean:.2%} ({r.test_min:.2%}-{r.test_max:.2%}) | "
                     + " | ".join(f"{getattr(r, c):.2f}" for c in lat_cols) + " |")
    verdicts = []
    for budget, group in table[table["method"] != "unpruned"].groupby("budget", sort=False):
        rows = group.set_index("method")
        if "searched" not in rows.index:
            continue
        s = rows.loc["searched"]
        for other in ("uniform", "global"):
            if other not in rows.index:
                continue
            o = rows.loc[other]
            gap = 100 * (s["test_mean"] - o["test_mean"])
            overlap = s["test_min"] <= o["test_max"] and o["test_min"] <= s["test_max"]
            verdicts.append(f"- {budget}: searched vs {other} {gap:+.2f} pp"
                            + (" (seed ranges overlap: not a clear difference)" if overlap else ""))
    body = f"""
{config.model} on {config.data}. Every model was recalibrated (adaptive BN) and fine-tuned for
{config.finetune_epochs} epochs (lr {config.finetune_lr}, SGD, cosine) with seeds {', '.join(map(str, seeds))}; test accuracy on
the test split. `searched`: the best adaptive-BN proxy of {trials} `{strategy}` trials; `uniform`: the same ratio in
every group (largest within budget, criterion {config.criterion}); `global`: Torch-Pruning MagnitudePruner, L1,
global threshold, per-group cap as in the search space; `unpruned`: the baseline fine-tuned alike.
Latency: forward pass on {config.device} (eval mode), median of 3 interleaved rounds per model.

""" + "\n".join(lines) + "\n\n" + "\n".join(verdicts) + """

![test accuracy vs MACs](baselines.png)

Files: baselines.csv (per model), runs.csv (per fine-tune seed), runs/ (the searches).
"""
    bench.write_summary("Searched subnets against baselines", body)
