"""Weight vs filter pruning at equal parameter counts: which one runs faster?

At each parameter budget, the filter-pruned subnet (one L1 ratio in every group, the largest that
fits) and a weight-pruned model with exactly as many parameters left (one global magnitude
threshold over every conv and linear layer, zeros in dense tensors) are scored by adaptive BN and
timed next to the unpruned model, in interleaved rounds in one process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from autoprune.bench.common import BenchDir, figure, measure_latencies
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.pruning.weights import GLOBAL, WeightSpace
from autoprune.search.allocation import uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator


def check(*, budgets: list[str], latency_batches: list[int], **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for no latency
    batch sizes or one below 1, no budgets, or a latency budget among them."""
    if not latency_batches or min(latency_batches) < 1:
        raise UserError("--latency-batches must name batch sizes of at least 1")
    if not budgets:
        raise UserError("--budgets must name at least one budget")
    for text in budgets:
        if parse_budget(text).needs_latency:
            raise UserError(f"--budgets: {text} is a latency budget; this study compares at equal parameters")


def run(config: SearchConfig, bench: BenchDir, *, budgets: list[str], latency_batches: list[int],
        quiet: bool = False) -> pd.DataFrame:
    """At each budget, the uniform filter-pruned subnet and a global-magnitude weight-pruned model with as many
    parameters, scored by adaptive BN and timed beside the unpruned model; returns the table of
    granularity.csv.

    Per model: params, params and MACs as % of the unpruned model (and the MACs a dense kernel still runs),
    the proxy accuracy (a fraction), and at each of ``latency_batches`` the latency in ms and the speedup.
    A budget no uniform ratio meets is skipped. Also writes granularity.png and summary.md.
    """
    data, model, filters = load_workbench(config)
    weights = WeightSpace(model, data.example_input(), scope="global")
    evaluator = make_evaluator(config, data)
    base = filters.base_cost
    arms = {"unpruned": ("", "unpruned", filters.model, base, base.macs)}
    for text in budgets:
        ratios = uniform_at_budget(filters, parse_budget(text))
        if ratios is None:
            bench.log(f"{text}: no uniform ratio fits; skipped")
            continue
        cost = filters.cost(ratios)
        arms[f"{text} filter"] = (text, "filter", filters.prune(ratios)[0], cost, cost.macs)
        # as many weights zeroed as the filter subnet has parameters fewer; dense kernels still run every MAC
        sparsity = (base.params - cost.params) / weights.groups[0].channels
        arms[f"{text} weight"] = (text, "weight", weights.prune({GLOBAL: sparsity})[0],
                                  weights.cost({GLOBAL: sparsity}), base.macs)
    scores = bench.done("proxy")
    if scores is None:
        bench.log(f"scoring {len(arms)} models by adaptive BN")
        scores = bench.record("proxy", {name: evaluator.score(arm[2]) for name, arm in arms.items()})
    latency = bench.done("latency")
    if latency is None:
        bench.log(f"timing {len(arms)} models at batch {', '.join(map(str, latency_batches))}")
        latency = bench.record("latency", measure_latencies({name: arm[2] for name, arm in arms.items()},
                                                            data.input_shape, latency_batches, config.device))
    rows = []
    for name, (budget, method, _, cost, dense_macs) in arms.items():
        row = {"model": name, "budget": budget, "method": method, "params": cost.params,
               "params_pct": 100 * cost.params / base.params, "macs_pct": 100 * cost.macs / base.macs,
               "dense_macs_pct": 100 * dense_macs / base.macs, "proxy_acc": scores[name]}
        for b in latency_batches:
            ms = latency[name][str(b)]
            row.update({f"latency_b{b}_ms": ms, f"speedup_b{b}": latency["unpruned"][str(b)] / ms})
        rows.append(row)
    frame = pd.DataFrame(rows)
    bench.write_csv("granularity.csv", frame)
    _plot(bench, frame, latency_batches)
    _summary(bench, config, frame, latency_batches)
    return frame


def _plot(bench: BenchDir, frame: pd.DataFrame, batches: list[int]) -> None:
    fig, axes = figure(len(batches) + 1, width=5.0)
    for ax, b in zip(axes[0], batches):
        for method, marker in (("unpruned", "*"), ("filter", "s"), ("weight", "o")):
            t = frame[frame["method"] == method]
            ax.plot(t["params_pct"], t[f"latency_b{b}_ms"], marker=marker, linestyle="-" if len(t) > 1 else "",
                    label=method)
        ax.set_xlabel("parameters left (% of the unpruned model)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"batch {b}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    for method, marker in (("unpruned", "*"), ("filter", "s"), ("weight", "o")):
        t = frame[frame["method"] == method]
        ax.plot(t["params_pct"], 100 * t["proxy_acc"], marker=marker, linestyle="-" if len(t) > 1 else "", label=method)
    ax.set_xlabel("parameters left (% of the unpruned model)")
    ax.set_ylabel("adaptive-BN proxy accuracy (%)")
    ax.set_title("accuracy before fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bench.save_figure(fig, "granularity.png")


def _summary(bench: BenchDir, config: SearchConfig, frame: pd.DataFrame, batches: list[int]) -> None:
    head = ("| model | params % | sparse MACs % | MACs a dense kernel runs % | proxy accuracy | "
            + " | ".join(f"b{b} ms | b{b} speedup" for b in batches) + " |")
    lines = [head, "|---|---:|---:|---:|---:|" + "---:|---:|" * len(batches)]
    for _, r in frame.iterrows():
        cells = " | ".join(f"{r[f'latency_b{b}_ms']:.2f} | {r[f'speedup_b{b}']:.2f}x" for b in batches)
        lines.append(f"| {r['model']} | {r['params_pct']:.1f} | {r['macs_pct']:.1f} | {r['dense_macs_pct']:.1f} | "
                     f"{r['proxy_acc']:.2%} | {cells} |")
    weight = frame[frame["method"] == "weight"]
    filt = frame[frame["method"] == "filter"]
    notes = []
    for b in batches:
        if len(weight) and len(filt):
            notes.append(f"- batch {b}: weight-pruned models run at {np.min(weight[f'speedup_b{b}']):.2f}x to "
                         f"{np.max(weight[f'speedup_b{b}']):.2f}x the unpruned speed; filter-pruned ones at "
                         f"{np.min(filt[f'speedup_b{b}']):.2f}x to {np.max(filt[f'speedup_b{b}']):.2f}x.")
    body = f"""
{config.model} on {config.data}, {config.device}. At each budget, `filter`: one L1 ratio in every group, the
largest that fits (channels removed, a narrower dense network); `weight`: as many parameters left, by
one global magnitude threshold over every conv and linear layer (zeros in the dense tensors). Proxy:
adaptive-BN accuracy on {config.score_images} held-out images before any fine-tuning. Latency: forward
pass in eval mode, median of 3 interleaved rounds of 30 timed passes.

""" + "\n".join(lines) + "\n\n" + "\n".join(notes) + """

![latency and accuracy vs parameters](granularity.png)

Files: granularity.csv.
"""
    bench.write_summary("Weight vs filter pruning at equal parameters", body)
