"""Is a searched subnet better than the simple ways to the same budget?

At each budget four models are fine-tuned alike (same epochs, learning rate and seeds, BN
recalibrated first): the candidate a search chooses (adaptive-BN proxy, then the short fine-tunes of
its ``--shortlist`` stage), uniform per-group ratios ranked by the same criterion, Torch-Pruning's
global magnitude pruning (L1, one threshold across groups), and the unpruned model. Uniform and global
are bisected to the same budget, or at a latency budget to the searched subnet's measured latency.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NamedTuple

import pandas as pd
import torch_pruning as tp
from torch import nn

from autoprune.bench.common import (
    BenchDir,
    best_searched,
    figure,
    finetuned_accuracy,
    measure_on_target,
    set_up_widths,
    timing_columns,
    width_rule,
)
from autoprune.budget import Budget, parse_budget
from autoprune.config import SearchConfig
from autoprune.deployment import MULTIPLES, measure_beside, run_target
from autoprune.errors import UserError
from autoprune.measure.cost import Cost
from autoprune.measure.count import count_cost
from autoprune.measure.layers import built_dims
from autoprune.pruning.space import PruningSpace
from autoprune.search import list_strategies
from autoprune.search.allocation import bisect_budget, uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator

MARKERS = {"searched": "o", "uniform": "s", "uniform wider": "v", "global": "^"}  # the pruned methods, as plotted
MATCH_STEPS = 8  # halvings of a baseline's ratio when matching a measured latency: within 0.7 / 2**8 of the boundary


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

    At each budget every method keeps the width rule that budget's search set up on the target at the first of
    ``latency_batches`` (``heuristic_subnets``; the study's own ``set_up_widths`` where the search scored nothing).
    At a latency budget the search meets it as predicted at that batch, and uniform and global are then matched to
    the searched subnet's measured latency there (``match_latency``), so that the three compare at equal measured
    latency (where the search scored nothing, they meet the predicted budget); the uniform subnet one step
    wider (``next_wider``, method ``uniform wider``) is fine-tuned too, so that the two bracket that latency.
    Arms a resumed study gains after its timing are timed beside the unpruned model on their own. Per budget
    and method: MACs of one
    sample, MACs as % of the unpruned model, params, the adaptive-BN proxy accuracy and the test accuracy's mean,
    min and max over the seeds (fractions in [0, 1]), and at each of ``latency_batches`` the latency in ms and
    the speedup over the unpruned model, measured on the target beside it, with their lowest and highest
    rounds. A method that cannot meet a budget is skipped. Also writes runs.csv (per seed), baselines.png and
    summary.md, and journals every unit of work in ``bench``.
    """
    parsed = {b: parse_budget(b) for b in budgets}
    config = replace(config, finetune_epochs=finetune_epochs, latency_batch=latency_batches[0])
    data, _, space = load_workbench(config)
    evaluator = make_evaluator(config, data)
    setup = set_up_widths(config, bench, space, data.input_shape, latency_batches[0], budgets, quiet=quiet)
    seeds = [config.seed + 1 + j for j in range(finetune_seeds)]
    arms: list[tuple[str, str, nn.Module | None]] = [("100%", "unpruned", copy.deepcopy(space.model))]
    rules: dict[str, str] = {}  # budget -> the width rule its search set up, which all three methods keep there
    for text, budget in parsed.items():
        best = best_searched(config, bench, space, text, quiet=quiet, strategy=strategy, trials=trials)
        arms.append((text, "searched", None if best is None else best.model))
        multiple, widths = (setup.multiple, setup.widths) if best is None else (best.multiple, best.widths)
        made = heuristic_subnets(space, budget, multiple, widths)
        rules[text] = width_rule(multiple, widths, made.global_multiple)
        wider = None
        if budget.needs_latency and best is not None:
            families, high = baseline_families(space, widths, made.global_multiple), max(g.high for g in space.groups)
            matched = bench.done(f"{text} matched")
            if matched is None:
                bench.log(f"{text}: matching uniform and global to the searched subnet's measured latency at batch "
                          f"{latency_batches[0]}")
                matched = bench.record(f"{text} matched",
                                       match_latency(config, families, high, best.model, data.input_shape))
            built = {name: None if x is None else families[name](x) for name, x in matched.items()}
            made = made._replace(uniform=built["uniform"], global_=built["global"])
            wider = next_wider(families["uniform"], matched["uniform"], high, made.uniform)
        arms += [(text, "uniform", made.uniform), (text, "global", made.global_)]
        if wider is not None:
            arms.append((text, "uniform wider", wider))
    skipped = [f"{text} {method}" for text, method, model in arms if model is None]
    for name in skipped:
        bench.log(f"{name}: cannot meet the budget, skipped")
    arms = [(text, method, model) for text, method, model in arms if model is not None]
    models = {f"{text} {method}": model for text, method, model in arms}
    latency = bench.done("latency")
    if latency is None:
        bench.log(f"timing {len(arms)} models at batch {', '.join(map(str, latency_batches))}")
        timed, described = measure_on_target(config, models, data.input_shape, latency_batches)
        latency = bench.record("latency", {"models": timed, "target": described})
    added = [name for name in models if name not in latency["models"]]
    if added:  # arms a resumed study gained after its timing: timed beside the unpruned model on their own
        key = "latency of " + ", ".join(added)
        extra = bench.done(key)
        if extra is None:
            bench.log(f"timing {', '.join(added)} at batch {', '.join(map(str, latency_batches))}")
            timed, _ = measure_on_target(config, {"100% unpruned": models["100% unpruned"],
                                                  **{name: models[name] for name in added}},
                                         data.input_shape, latency_batches)
            extra = bench.record(key, {"models": {name: timed[name] for name in added}})
        latency = {**latency, "models": {**latency["models"], **extra["models"]}}
    rows = []
    for text, method, model in arms:
        arm = bench.done(f"{text} {method}")
        if arm is None:
            cost = count_cost(model, space.example_input)
            arm = bench.record(f"{text} {method}", {"macs": cost.macs, "params": cost.params,
                                                    "proxy_acc": evaluator.score(copy.deepcopy(model))})
        measured = latency["models"][f"{text} {method}"]
        timed = {k: v for b in latency_batches for k, v in timing_columns(measured[str(b)], b).items()}
        for seed in seeds:
            key = f"{text} {method} seed {seed}"
            result, trained = finetuned_accuracy(bench, key, model, config, data, evaluator, seed=seed)
            if trained:
                bench.log(f"{key}: {result['test_acc']:.2%} after {finetune_epochs} epochs")
            rows.append({"budget": text, "method": method, "seed": seed, **arm, **timed, **result})
    runs = pd.DataFrame(rows)
    runs["macs_pct"] = 100 * runs["macs"] / space.base_cost.macs
    bench.write_csv("runs.csv", runs)
    table = _table(runs)
    bench.write_csv("baselines.csv", table)
    _plot(bench, table, latency_batches[0])
    _summary(bench, config, table, seeds, strategy, trials, latency_batches, latency["target"], rules)
    return table


class Heuristics(NamedTuple):
    """The baselines at one budget under one width rule (``heuristic_subnets``); a model is None where it cannot
    meet the budget."""

    uniform: nn.Module | None
    global_: nn.Module | None
    global_multiple: int | None  # the multiple global's widths were rounded to


def heuristic_subnets(space: PruningSpace, budget: Budget, multiple: int | None,
                      widths: Mapping[str, list[int]] | None) -> Heuristics:
    """The uniform subnet (``uniform_at_budget``: the largest uniform ratio within ``budget``, ranked by the space's
    criterion) and the global-magnitude one (``_global_magnitude``) under a width rule: each group's kept
    ``widths`` (None: every width) and, for global, which Torch-Pruning cannot restrict to a list, its widths
    rounded to ``multiple`` (None: 1), or where rounding so cannot meet the budget (a narrow group rounds up
    past the space's largest ratio), to the next smaller multiple of ``deployment.MULTIPLES`` that can, as a
    search's set-up does. The rule is the one a search at ``budget`` set up (``best_searched``), so that the
    baselines and the searched subnet differ in their per-group widths alone."""
    with space.widths_of(widths):
        uniform = uniform_at_budget(space, budget)
        uniform = None if uniform is None else space.prune(uniform)[0]
    for m in [m for m in MULTIPLES if m <= (multiple or 1)][::-1]:
        pruned = _global_magnitude(space, budget, round_to=m)
        if pruned is not None:
            return Heuristics(uniform, pruned, m)
    return Heuristics(uniform, None, None)


def _global_magnitude(space: PruningSpace, budget: Budget, round_to: int = 1) -> nn.Module | None:
    """Torch-Pruning's MagnitudePruner (``global_magnitude``), its ratio bisected to the budget.

    A latency budget is judged by the space's predictor at each step's layer widths (``built_dims``).
    None when the budget needs latency and the space has no predictor, or cannot be met.
    """
    table = space.costs.latency
    if budget.needs_latency and table is None:
        return None
    base = space.base_cost

    def fits(model: nn.Module) -> bool:
        cost = count_cost(model, space.example_input)
        if budget.needs_latency:
            cost = Cost(cost.macs, cost.params, table.predict(built_dims(model, table.layers)))
        return budget.feasible(cost, base)

    found = bisect_budget(lambda ratio: global_magnitude(space, ratio, round_to), fits, 0.0,
                          max(g.high for g in space.groups), iterations=14)
    return None if found is None else found[1]


def global_magnitude(space: PruningSpace, ratio: float, round_to: int = 1) -> nn.Module:
    """A copy of the space's model pruned by Torch-Pruning's MagnitudePruner (L1, one global threshold) at
    ``ratio`` (a fraction of the prunable channels, in [0, 1)), every width rounded to a multiple of ``round_to``.
    Each group may lose at most the space's largest ratio, and the classifier is kept, as in the search."""
    model = copy.deepcopy(space.model)
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in (space.classifier, *space.unprunable) if n in modules]
    pruner = tp.pruner.MagnitudePruner(model, space.example_input, importance=tp.importance.MagnitudeImportance(p=1),
                                       global_pruning=True, pruning_ratio=ratio,
                                       max_pruning_ratio=max(g.high for g in space.groups), ignored_layers=ignored,
                                       round_to=round_to if round_to > 1 else None)
    pruner.step()
    return model


def baseline_families(space: PruningSpace, widths: Mapping[str, list[int]] | None,
                      global_multiple: int | None) -> dict[str, Callable[[float], nn.Module]]:
    """Each baseline as a family of subnets along one ratio ``x`` in [0, the space's largest ratio], pruning more as
    ``x`` grows: ``uniform`` (``x`` in every group, ranked by the space's criterion, under ``widths``; None: every
    width) and ``global`` (``global_magnitude`` at ``x``, widths rounded to ``global_multiple``; None: 1)."""

    def uniform(x: float) -> nn.Module:
        with space.widths_of(widths):
            return space.prune(space.uniform_ratios(x))[0]

    return {"uniform": uniform, "global": lambda x: global_magnitude(space, x, global_multiple or 1)}


def next_wider(build: Callable[[float], nn.Module], matched: float | None, high: float,
               matched_model: nn.Module | None) -> nn.Module | None:
    """The subnet of a family (``baseline_families``) one bisection step wider than its ``matched`` ratio
    (``match_latency`` over [0, ``high``]; ``matched_model`` its subnet): the lower end of the bisection's last
    interval, the last step the matching measured slower than the searched subnet. With the matched one it
    brackets the searched subnet's latency where one ratio moves in coarse steps. None where nothing was
    matched, where that end is ratio 0 (the unpruned model, never measured; the journal keeps ratios to 6
    decimals), or where it builds the matched subnet again."""
    if matched is None or matched_model is None or matched - high / 2**MATCH_STEPS < 1e-6:
        return None
    wider = build(matched - high / 2**MATCH_STEPS)
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in (wider, matched_model)]
    return None if shapes[0] == shapes[1] else wider


def match_latency(config: SearchConfig, families: Mapping[str, Callable[[float], nn.Module]], high: float,
                  reference: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float | None]:
    """Per family (``baseline_families``), the smallest ratio in [0, ``high``] whose subnet runs no slower than
    ``reference`` (the searched subnet) on the run's target at its latency batch: bisected in ``MATCH_STEPS``
    halvings, each step's subnet prepared as it ships and timed beside ``reference`` in interleaved rounds (no
    slower: the median of the paired per-round speedups is 1 or more). The least-pruned baseline as fast as the
    searched subnet, so that the methods compare at equal measured latency up to the family's step and the
    timing noise. None for a family whose most-pruned subnet is still slower."""
    target = run_target(config)
    reference_call = target.prepare(reference, input_shape)

    def no_slower(model: nn.Module) -> bool:
        _, (measured,) = measure_beside(target, reference_call,
                                        {"baseline": (target.prepare(model, input_shape), None, None)})
        return measured.speedup >= 1.0

    found = {}
    for name, build in families.items():
        hit = bisect_budget(build, no_slower, 0.0, high, iterations=MATCH_STEPS)
        found[name] = None if hit is None else round(hit[0], 6)
    return found


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    latency = [c for c in runs if c.startswith(("latency", "speedup"))]
    grouped = runs.groupby(["budget", "method"], sort=False)
    table = grouped.agg(macs=("macs", "first"), macs_pct=("macs_pct", "first"), params=("params", "first"),
                        proxy_acc=("proxy_acc", "first"), test_mean=("test_acc", "mean"), test_min=("test_acc", "min"),
                        test_max=("test_acc", "max"), seeds=("seed", "count"),
                        **{c: (c, "first") for c in latency}).reset_index()
    return table


def _plot(bench: BenchDir, table: pd.DataFrame, batch: int) -> None:
    fig, axes = figure(2, width=6.0)
    base = table[table["method"] == "unpruned"]
    for ax, x, label in ((axes[0][0], "macs_pct", "MACs (% of the unpruned model)"),
                         (axes[0][1], f"speedup_b{batch}", f"speedup at batch {batch}, measured on the target")):
        if len(base):
            b = base.iloc[0]
            ax.axhspan(100 * b["test_min"], 100 * b["test_max"], color="grey", alpha=0.2)
            ax.axhline(100 * b["test_mean"], color="grey", linestyle="--", label="unpruned (fine-tuned alike)")
        for method, marker in MARKERS.items():
            t = table[table["method"] == method].sort_values(x)
            if len(t):
                ax.errorbar(t[x], 100 * t["test_mean"],
                            yerr=[100 * (t["test_mean"] - t["test_min"]), 100 * (t["test_max"] - t["test_mean"])],
                            fmt=marker, capsize=3, label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%; mean and range over fine-tune seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    bench.save_figure(fig, "baselines.png")


def _summary(bench, config, table, seeds, strategy, trials, latency_batches, targets, rules) -> None:
    lines = ["| budget | method | MACs (M) | MACs % | params (M) | proxy before fine-tuning | test accuracy (mean, range) | "
             + " | ".join(f"b{b} ms | b{b} speedup" for b in latency_batches) + " |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(latency_batches)]
    for _, r in table.iterrows():
        cells = " | ".join(f"{r[f'latency_b{b}_ms']:.3f} | {r[f'speedup_b{b}']:.2f}x ({r[f'speedup_b{b}_low']:.2f}-"
                           f"{r[f'speedup_b{b}_high']:.2f})" for b in latency_batches)
        lines.append(f"| {r['budget']} | {r['method']} | {r['macs'] / 1e6:.2f} | {r['macs_pct']:.1f} | "
                     f"{r['params'] / 1e6:.3f} | {r['proxy_acc']:.2%} | {r['test_mean']:.2%} ({r['test_min']:.2%}-"
                     f"{r['test_max']:.2%}) | {cells} |")
    first = latency_batches[0]
    verdicts = []
    for budget, group in table[table["method"] != "unpruned"].groupby("budget", sort=False):
        rows = group.set_index("method")
        if "searched" not in rows.index:
            continue
        s = rows.loc["searched"]
        for other in [m for m in MARKERS if m != "searched"]:
            if other not in rows.index:
                continue
            o = rows.loc[other]
            gap = 100 * (s["test_mean"] - o["test_mean"])
            overlap = s["test_min"] <= o["test_max"] and o["test_min"] <= s["test_max"]
            verdicts.append(f"- {budget}: searched vs {other} {gap:+.2f} pp"
                            + (" (seed ranges overlap: not a clear difference)" if overlap else "")
                            + (f", at {s[f'speedup_b{first}']:.2f}x vs {o[f'speedup_b{first}']:.2f}x measured"
                               if parse_budget(budget).needs_latency else ""))
    chosen = (f"the best held-out accuracy after {config.shortlist_steps} training steps of the {config.shortlist_size} "
              f"best by adaptive-BN proxy (the `--shortlist` stage)" if config.shortlist_size > 1
              else "the best adaptive-BN proxy")
    where = "; ".join(f"batch {b}: {targets[str(b)]}" for b in latency_batches)
    rules_text = "; ".join(f"{b}: {rule}" for b, rule in rules.items())
    body = f"""
{config.model} on {config.data}. Every model was recalibrated (adaptive BN) and fine-tuned for
{config.finetune_epochs} epochs (lr {config.finetune_lr}, SGD, cosine) with seeds {', '.join(map(str, seeds))}; test accuracy on
the test split. `searched`: of {trials} `{strategy}` trials, {chosen}; `uniform`: the same ratio in
every group (largest within budget, criterion {config.criterion}); `global`: Torch-Pruning MagnitudePruner, L1,
global threshold, per-group cap as in the search space; `unpruned`: the baseline fine-tuned alike. At each budget
the three methods keep the width rule that budget's search set up on the target at batch {first} ({rules_text}),
so that they differ in their per-group widths alone: global, which Torch-Pruning cannot restrict to a list of
widths, rounds to the rule's multiple, or the next smaller one where that cannot meet the budget. At a latency
budget the search meets it as predicted at batch {first}; uniform and global are then matched to the searched
subnet's measured latency there: each is the least-pruned of its family (its one ratio bisected {MATCH_STEPS} times)
that runs no slower than the searched subnet, timed beside it in interleaved rounds, so that the three compare
at equal measured latency up to the family's step and the timing noise. `uniform wider`: the uniform subnet one
bisection step wider, which the matching measured slower than the searched subnet; with `uniform` it brackets
the searched subnet's latency where one ratio cannot reach it (shown where it differs from `uniform`).
Target: {where}. Latency: each model exported as it ships and timed beside the unpruned model in
{config.latency_rounds} interleaved rounds; speedup paired round by round, (lowest-highest round) after it.

""" + "\n".join(lines) + "\n\n" + "\n".join(verdicts) + """

![test accuracy vs MACs and vs measured speedup](baselines.png)

Files: baselines.csv (per model), runs.csv (per fine-tune seed), runs/ (the searches; runs/widths/latency.json,
the width rule).
"""
    bench.write_summary("Searched subnets against baselines", body)
