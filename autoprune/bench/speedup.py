"""Does a MAC reduction buy real speed on the deployment target?

At each budget three subnets of one width rule, timed at each batch beside the unpruned model on the
target (``--target``: onnxruntime by default on the CPU), each exported as it would ship:

- ``uniform``: one ratio in every group, the largest within the budget;
- ``searched``: the candidate a short ``random`` search at the budget chooses to fine-tune first;
- ``global``: Torch-Pruning's MagnitudePruner, L1 with a global threshold, bisected to the budget.

The width rule at each budget is the one that budget's search set up (``autoprune.deployment``): uniform and
searched keep its efficient widths of the target at the first batch, global rounds its widths to the same
channel multiple.
A search under a latency budget (predicted at the largest batch) is timed the same way, its prediction next
to the measurement. Speedups are paired round by round with the unpruned model, with their spread.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from autoprune.bench.common import (
    BenchDir,
    best_searched,
    figure,
    measure_on_target,
    set_up_widths,
    timing_columns,
    width_rule,
)
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.workbench import load_workbench

METHODS = ("uniform", "searched", "global")


def check(*, budgets: list[str], latency_budget: str, trials: int, latency_batches: list[int], **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for fewer than 1
    trial, no latency batch sizes or one below 1, a latency budget in ``budgets``, or a ``latency_budget``
    without a latency constraint."""
    if trials < 1:
        raise UserError("--trials must be at least 1")
    if not latency_batches or min(latency_batches) < 1:
        raise UserError("--latency-batches must name batch sizes of at least 1")
    for text in budgets:
        if parse_budget(text).needs_latency:
            raise UserError(f"--budgets: {text} is a latency budget; give it as --latency-budget")
    if latency_budget and not parse_budget(latency_budget).needs_latency:
        raise UserError(f"--latency-budget: {latency_budget} has no latency constraint")


def run(config: SearchConfig, bench: BenchDir, *, budgets: list[str], latency_budget: str, trials: int,
        latency_batches: list[int], quiet: bool = False) -> pd.DataFrame:
    """Time the uniform, searched and global subnets at each budget, and the best under ``latency_budget``
    (predicted at the largest batch), beside the unpruned model on the target; returns the table of speedup.csv.

    Per model: MACs of one sample, MACs as % of the unpruned model, params, the MAC reduction (unpruned /
    subnet), and at each of ``latency_batches`` the latency in ms with its lowest and highest round, the speedup
    with its spread and the speedup per MAC reduction; the latency search's predicted ms too. Also writes
    speedup.png and summary.md.
    """
    from autoprune.bench.baselines import heuristic_subnets

    data, _, space = load_workbench(config)
    setup = set_up_widths(config, bench, space, data.input_shape, latency_batches[0], budgets, quiet=quiet)
    models = {"unpruned": ("", "unpruned", space.model)}
    predicted: dict[str, float] = {}
    rules: dict[str, str] = {}  # budget -> the width rule its search set up, which all three methods keep there
    for text in budgets:
        best = best_searched(config, bench, space, text, quiet=quiet, strategy="random", trials=trials)
        multiple, widths = (setup.multiple, setup.widths) if best is None else (best.multiple, best.widths)
        made = heuristic_subnets(space, parse_budget(text), multiple, widths)
        rules[text] = width_rule(multiple, widths, made.global_multiple)
        for method, model in (("uniform", made.uniform), ("searched", None if best is None else best.model),
                              ("global", made.global_)):
            if model is not None:
                models[f"{text} {method}"] = (text, method, model)
    search_batch = max(latency_batches)
    if latency_budget:
        best = best_searched(replace(config, latency_batch=search_batch), bench, space, latency_budget, quiet=quiet,
                             strategy="random", trials=trials, warm_start=True)
        if best is not None:
            name = f"{latency_budget} searched"
            models[name] = (latency_budget, "latency search", best.model)
            predicted[name] = float(best.row["predicted_latency_ms"])
    latency = bench.done("latency")
    if latency is None:
        bench.log(f"timing {len(models)} models at batch {', '.join(map(str, latency_batches))}")
        timed, described = measure_on_target(config, {name: m for name, (_, _, m) in models.items()},
                                             data.input_shape, latency_batches)
        latency = bench.record("latency", {"models": timed, "target": described})
    rows = []
    base = count_of(space.model, space)
    for name, (budget, method, model) in models.items():
        macs, params = count_of(model, space)
        row = {"model": name, "budget": budget, "method": method, "macs": macs, "macs_pct": 100 * macs / base[0],
               "params": params, "macs_reduction": base[0] / macs}
        for b in latency_batches:
            row.update(timing_columns(latency["models"][name][str(b)], b))
            row[f"speedup_per_mac_reduction_b{b}"] = row[f"speedup_b{b}"] / row["macs_reduction"]
        if name in predicted:
            row[f"predicted_b{search_batch}_ms"] = predicted[name]
        rows.append(row)
    frame = pd.DataFrame(rows)
    bench.write_csv("speedup.csv", frame)
    _plot(bench, frame, latency_batches)
    _summary(bench, config, frame, latency_batches, trials, search_batch, latency["target"], rules)
    return frame


def count_of(model, space) -> tuple[int, int]:
    """MACs of one sample and params of ``model``, traced (``autoprune.measure.count``)."""
    from autoprune.measure.count import count_cost

    cost = count_cost(model, space.example_input)
    return cost.macs, cost.params


def _plot(bench: BenchDir, frame: pd.DataFrame, batches: list[int]) -> None:
    fig, axes = figure(len(batches), width=5.5)
    base = frame[frame["method"] == "unpruned"].iloc[0]
    for ax, b in zip(axes[0], batches):
        xs = np.linspace(frame["macs_pct"].min() * 0.9, 100, 20)
        ax.plot(xs, base[f"latency_b{b}_ms"] * xs / 100, color="grey", linestyle=":", label="latency proportional to MACs")
        for method, marker in (("unpruned", "*"), ("uniform", "s"), ("searched", "o"), ("global", "^"),
                               ("latency search", "D")):
            t = frame[frame["method"] == method]
            if len(t):
                ax.errorbar(t["macs_pct"], t[f"latency_b{b}_ms"],
                            yerr=[t[f"latency_b{b}_ms"] - t[f"latency_b{b}_low"],
                                  t[f"latency_b{b}_high"] - t[f"latency_b{b}_ms"]],
                            fmt=marker, ms=7, capsize=3, label=method)
        ax.set_xlabel("MACs (% of the unpruned model)")
        ax.set_ylabel("latency (ms; bars: lowest-highest round)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    bench.save_figure(fig, "speedup.png")


def _summary(bench, config, frame, batches, trials, search_batch, targets, rules) -> None:
    head = ("| model | MACs % | MAC reduction | " + " | ".join(f"b{b} ms | b{b} speedup | b{b} speedup / MAC reduction"
                                                          for b in batches) + " |")
    lines = [head, "|---|---:|---:|" + "---:|---:|---:|" * len(batches)]
    for _, r in frame.iterrows():
        cells = " | ".join(
            f"{r[f'latency_b{b}_ms']:.3f} | {r[f'speedup_b{b}']:.2f}x ({r[f'speedup_b{b}_low']:.2f}-"
            f"{r[f'speedup_b{b}_high']:.2f}) | {r[f'speedup_per_mac_reduction_b{b}']:.2f}" for b in batches)
        lines.append(f"| {r['model']} | {r['macs_pct']:.1f} | {r['macs_reduction']:.2f}x | {cells} |")
    pred_col = f"predicted_b{search_batch}_ms"
    extra = ""
    if pred_col in frame:
        for _, r in frame[frame[pred_col].notna()].iterrows():
            measured = r[f"latency_b{search_batch}_ms"]
            extra += (f"\nLatency search ({r['budget']}, batch {search_batch}): predicted {r[pred_col]:.3f} ms, measured "
                      f"{measured:.3f} ms ({r[pred_col] / measured - 1:+.1%}), a speedup of "
                      f"{r[f'speedup_b{search_batch}']:.2f}x ({r[f'speedup_b{search_batch}_low']:.2f}-"
                      f"{r[f'speedup_b{search_batch}_high']:.2f}); it kept {r['macs_pct']:.1f}% of MACs.\n")
    where = "; ".join(f"batch {b}: {targets[str(b)]}" for b in batches)
    widths = "; ".join(f"{b}: {rule}" for b, rule in rules.items())
    body = f"""
{config.model} on {config.data}, {config.device}. Target: {where}. Width rule at each budget, the one its search
set up, kept by all three methods there: {widths} (global: rounded to the same multiple unless said).
`uniform`: one ratio in every group; `searched`: the candidate a search of {trials} `random` trials at that
budget chooses to fine-tune first; `global`: Torch-Pruning MagnitudePruner, L1, global threshold. Latency: each
model exported as it ships and timed beside the unpruned model in {config.latency_rounds} interleaved rounds; speedup paired round by
round, (lowest-highest round) after it. A speedup / MAC reduction of 1.0 means the time fell as much as the MACs.

""" + "\n".join(lines) + "\n" + extra + """
![latency vs MACs](speedup.png)

Files: speedup.csv, runs/ (the searches; runs/widths/latency.json, the width rule).
"""
    bench.write_summary("Measured speedup against MAC reduction", body)
