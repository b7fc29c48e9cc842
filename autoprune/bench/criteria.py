"""Which channels to cut: every importance criterion at the same widths.

Two sets of per-group ratios are fixed first at the budget: the uniform one (one ratio in every
group, the largest that fits) and the best candidate of a short search (ranked by the run's
``--criterion``, l1 by default). Each criterion then ranks the channels of the same trained model
and is pruned to both sets, so the subnets of one set differ only in which channels they keep, at
exactly the same cost. Each is scored by adaptive BN and fine-tuned alike with the same seeds; the
time the criterion took to rank the channels is recorded too.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd

from autoprune.bench.common import BenchDir, best_searched, figure, finetuned_accuracy
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.pruning.criteria import list_criteria
from autoprune.pruning.space import PruningSpace
from autoprune.search.allocation import uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator, ranking_batches


def check(*, budget: str, criteria: list[str], trials: int, finetune_seeds: int, **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed
    or latency budget, unknown or no criteria, or fewer than 1 trial or fine-tune seed."""
    if parse_budget(budget).needs_latency:
        raise UserError("--budget: give a flops or params budget (the ratio sets are fixed on the exact cost model)")
    unknown = sorted(set(criteria) - set(list_criteria()))
    if unknown or not criteria:
        raise UserError(f"--criteria: unknown {unknown} (choose from {', '.join(list_criteria())})")
    if trials < 1 or finetune_seeds < 1:
        raise UserError("--trials and --finetune-seeds must be at least 1")


def run(config: SearchConfig, bench: BenchDir, *, budget: str, criteria: list[str], trials: int,
        finetune_epochs: float, finetune_seeds: int, quiet: bool = False) -> pd.DataFrame:
    """Prune with each of ``criteria`` to the uniform and the searched ratios (``trials`` random trials) at
    ``budget``, score and fine-tune alike; returns the table of criteria.csv.

    Per criterion and ratio set: MACs as % of the unpruned model, the seconds of the ranking, the
    adaptive-BN proxy accuracy and the test accuracy's mean, min and max over ``finetune_seeds`` seeds
    (fractions in [0, 1]). Raises ``UserError`` where neither ratio set meets the budget. Also writes
    runs.csv, criteria.png and summary.md.
    """
    config = replace(config, finetune_epochs=finetune_epochs)
    data, model, space = load_workbench(config)
    evaluator = make_evaluator(config, data)
    seeds = [config.seed + 1 + j for j in range(finetune_seeds)]
    ratio_sets = {"uniform": uniform_at_budget(space, parse_budget(budget))}
    best = best_searched(config, bench, space, budget, quiet=quiet, strategy="random", trials=trials)
    ratio_sets["searched"] = None if best is None else best.ratios
    ratio_sets = {kind: ratios for kind, ratios in ratio_sets.items() if ratios is not None}
    if not ratio_sets:
        raise UserError(f"no uniform ratio and no searched candidate meets {budget}")
    costs = {kind: space.cost(ratios) for kind, ratios in ratio_sets.items()}  # only the channels kept vary by criterion
    rows = []
    for criterion in criteria:
        ranked = PruningSpace(model, data.example_input(), space.config, criterion=criterion, seed=config.seed,
                              batches=ranking_batches(replace(config, criterion=criterion), data))
        ranking = bench.done(f"{criterion} ranking") or bench.record(
            f"{criterion} ranking", {"ranking_seconds": round(ranked.ranking_seconds, 3)})
        for kind, ratios in ratio_sets.items():
            subnet, _ = ranked.prune(ratios)
            arm = bench.done(f"{criterion} {kind}") or bench.record(
                f"{criterion} {kind}", {"proxy_acc": evaluator.score(copy.deepcopy(subnet))})
            for seed in seeds:
                key = f"{criterion} {kind} seed {seed}"
                result, trained = finetuned_accuracy(bench, key, subnet, config, data, evaluator, seed=seed)
                if trained:
                    bench.log(f"{key}: proxy {arm['proxy_acc']:.1%}, fine-tuned {result['test_acc']:.2%}")
                rows.append({"criterion": criterion, "ratios": kind, "seed": seed, "macs": costs[kind].macs,
                             "macs_pct": 100 * costs[kind].macs / space.base_cost.macs, **ranking, **arm, **result})
    runs = pd.DataFrame(rows)
    bench.write_csv("runs.csv", runs)
    table = runs.groupby(["criterion", "ratios"], sort=False).agg(
        macs_pct=("macs_pct", "first"), ranking_seconds=("ranking_seconds", "first"), proxy_acc=("proxy_acc", "first"),
        test_mean=("test_acc", "mean"), test_min=("test_acc", "min"), test_max=("test_acc", "max"),
        seeds=("seed", "count")).reset_index()
    bench.write_csv("criteria.csv", table)
    _plot(bench, table)
    _summary(bench, config, table, budget, seeds, trials)
    return table


def _plot(bench: BenchDir, table: pd.DataFrame) -> None:
    kinds = list(dict.fromkeys(table["ratios"]))
    names = list(dict.fromkeys(table["criterion"]))
    fig, axes = figure(2, width=6.0, height=0.35 * len(names) + 2)
    y = np.arange(len(names))
    height = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        t = table[table["ratios"] == kind].set_index("criterion").reindex(names)
        offset = y + (i - (len(kinds) - 1) / 2) * height
        axes[0][0].barh(offset, 100 * t["proxy_acc"], height=height, label=kind)
        axes[0][1].errorbar(100 * t["test_mean"], offset, xerr=[100 * (t["test_mean"] - t["test_min"]),
                                                                100 * (t["test_max"] - t["test_mean"])],
                            fmt="o", capsize=3, label=kind)
    for ax, label in ((axes[0][0], "adaptive-BN proxy accuracy (%)"),
                      (axes[0][1], "test accuracy after fine-tuning (%; mean and seed range)")):
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8)
    bench.save_figure(fig, "criteria.png")


def _summary(bench: BenchDir, config: SearchConfig, table: pd.DataFrame, budget: str, seeds: list[int],
             trials: int) -> None:
    kinds = list(dict.fromkeys(table["ratios"]))
    lines = ["| criterion | ranking seconds | " + " | ".join(f"{k}: proxy | {k}: fine-tuned (mean, range)" for k in kinds)
             + " |", "|---|---:|" + "---:|---:|" * len(kinds)]
    for criterion, group in table.groupby("criterion", sort=False):
        rows = group.set_index("ratios")
        cells = " | ".join(f"{rows.loc[k, 'proxy_acc']:.2%} | {rows.loc[k, 'test_mean']:.2%} "
                           f"({rows.loc[k, 'test_min']:.2%}-{rows.loc[k, 'test_max']:.2%})" for k in kinds)
        lines.append(f"| {criterion} | {group['ranking_seconds'].iloc[0]:.2f} | {cells} |")
    notes = []
    for kind in kinds:
        t = table[table["ratios"] == kind].sort_values("test_mean", ascending=False)
        macs = t["macs_pct"].iloc[0]
        notes.append(f"- {kind} ratios ({macs:.1f}% of MACs): best fine-tuned {t['criterion'].iloc[0]} "
                     f"{t['test_mean'].iloc[0]:.2%}, worst {t['criterion'].iloc[-1]} {t['test_mean'].iloc[-1]:.2%}; "
                     f"best proxy {t.sort_values('proxy_acc')['criterion'].iloc[-1]}.")
    body = f"""
{config.model} on {config.data} at {budget}. `uniform`: one ratio in every group, the largest that fits;
`searched`: the best adaptive-BN proxy of {trials} `random` trials ranked by `{config.criterion}`. Every criterion
is pruned to exactly these ratios, so within a row set only the channels kept differ. The data-driven
criteria saw {config.criterion_batches} training batches of {config.batch_size}. Each subnet was recalibrated and
fine-tuned for {config.finetune_epochs} epochs (lr {config.finetune_lr}) with seeds {', '.join(map(str, seeds))};
test accuracy on the test split. Ranking seconds: the criterion's pass over the data and the ranking of
every group, on this machine.

""" + "\n".join(lines) + "\n\n" + "\n".join(notes) + """

![proxy and fine-tuned accuracy per criterion](criteria.png)

Files: criteria.csv (per criterion and ratio set), runs.csv (per fine-tune seed), runs/ (the search).
"""
    bench.write_summary("Importance criteria at the same widths", body)
