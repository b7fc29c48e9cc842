"""Does a MAC reduction buy real speed on this machine?

For each budget, the uniform subnet and the best candidate of a short search are timed at each
batch size next to the unpruned model (interleaved rounds, same process); the speedup is
compared with the MAC reduction. A search under a latency budget (predicted by the per-layer
table at the largest batch) is timed the same way, its prediction next to the measurement.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd

from autoprune.bench.common import BenchDir, best_searched, figure, measure_latencies
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.search.allocation import uniform_at_budget
from autoprune.workbench import load_workbench


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
    """Time the uniform subnet and the best of ``trials`` random trials at each budget, and the best under
    ``latency_budget`` (predicted at the largest batch), beside the unpruned model; returns the table of
    speedup.csv.

    Per model: MACs of one sample, MACs as % of the unpruned model, params, the MAC reduction (unpruned /
    subnet), and at each of ``latency_batches`` the latency in ms, the speedup and the speedup per MAC
    reduction; the latency search's predicted ms too. Also writes speedup.png and summary.md.
    """
    data, _, space = load_workbench(config)
    models = {"unpruned": (None, "unpruned", {})}
    predicted: dict[str, float] = {}
    searched_base = None  # the unpruned latency the latency search measured, its budget's reference
    for text in budgets:
        uniform = uniform_at_budget(space, parse_budget(text))
        if uniform is not None:
            models[f"{text} uniform"] = (text, "uniform", uniform)
        best = best_searched(config, bench, space, text, quiet=quiet, strategy="random", trials=trials)
        if best is not None:
            models[f"{text} searched"] = (text, "searched", best[0])
    search_batch = max(latency_batches)
    if latency_budget:
        best = best_searched(replace(config, latency_batch=search_batch), bench, space, latency_budget, quiet=quiet,
                             strategy="random", trials=trials, warm_start=True)
        if best is not None:
            name = f"{latency_budget} searched"
            models[name] = (latency_budget, "latency search", best[0])
            predicted[name] = float(best[1]["predicted_latency_ms"])
            searched_base = json.loads((best[2] / "pareto.json").read_text())["baseline"]["latency_ms"]
    latency = bench.done("latency")
    if latency is None:
        bench.log(f"timing {len(models)} models at batch {', '.join(map(str, latency_batches))}")
        latency = bench.record("latency", measure_latencies(
            {name: space.prune(ratios)[0] if ratios else space.model for name, (_, _, ratios) in models.items()},
            data.input_shape, latency_batches, config.device))
    base = space.base_cost
    rows = []
    for name, (budget, method, ratios) in models.items():
        cost = space.cost(ratios)
        row = {"model": name, "budget": budget or "", "method": method, "macs": cost.macs,
               "macs_pct": 100 * cost.macs / base.macs, "params": cost.params, "macs_reduction": base.macs / cost.macs}
        for b in latency_batches:
            ms = latency[name][str(b)]
            speedup = latency["unpruned"][str(b)] / ms
            row.update({f"latency_b{b}_ms": ms, f"speedup_b{b}": speedup,
                        f"speedup_per_mac_reduction_b{b}": speedup / row["macs_reduction"]})
        if name in predicted:
            row[f"predicted_b{search_batch}_ms"] = predicted[name]
        rows.append(row)
    frame = pd.DataFrame(rows)
    bench.write_csv("speedup.csv", frame)
    _plot(bench, frame, latency_batches)
    _summary(bench, config, frame, latency_batches, trials, search_batch, searched_base)
    return frame


def _plot(bench: BenchDir, frame: pd.DataFrame, batches: list[int]) -> None:
    fig, axes = figure(len(batches), width=5.5)
    base = frame[frame["method"] == "unpruned"].iloc[0]
    for ax, b in zip(axes[0], batches):
        xs = np.linspace(frame["macs_pct"].min() * 0.9, 100, 20)
        ax.plot(xs, base[f"latency_b{b}_ms"] * xs / 100, color="grey", linestyle=":", label="latency proportional to MACs")
        for method, marker in (("unpruned", "*"), ("uniform", "s"), ("searched", "o"), ("latency search", "D")):
            t = frame[frame["method"] == method]
            if len(t):
                ax.scatter(t["macs_pct"], t[f"latency_b{b}_ms"], marker=marker, s=50, label=method)
        ax.set_xlabel("MACs (% of the unpruned model)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    bench.save_figure(fig, "speedup.png")


def _summary(bench, config, frame, batches, trials, search_batch, searched_base) -> None:
    head = ("| model | MACs % | MAC reduction | " + " | ".join(f"b{b} ms | b{b} speedup | b{b} speedup / MAC reduction"
                                                          for b in batches) + " |")
    lines = [head, "|---|---:|---:|" + "---:|---:|---:|" * len(batches)]
    for _, r in frame.iterrows():
        cells = " | ".join(f"{r[f'latency_b{b}_ms']:.2f} | {r[f'speedup_b{b}']:.2f}x | {r[f'speedup_per_mac_reduction_b{b}']:.2f}"
                           for b in batches)
        lines.append(f"| {r['model']} | {r['macs_pct']:.1f} | {r['macs_reduction']:.2f}x | {cells} |")
    pred_col = f"predicted_b{search_batch}_ms"
    extra = ""
    if pred_col in frame:
        for _, r in frame[frame[pred_col].notna()].iterrows():
            measured = r[f"latency_b{search_batch}_ms"]
            base = frame[frame["method"] == "unpruned"].iloc[0][f"latency_b{search_batch}_ms"]
            extra += (f"\nLatency search ({r['budget']}, batch {search_batch}): predicted {r[pred_col]:.2f} ms, measured "
                      f"{measured:.2f} ms ({r[pred_col] / measured - 1:+.1%}); it kept {r['macs_pct']:.1f}% of MACs. "
                      f"The search took its budget from the unpruned model measured at its own start, "
                      f"{searched_base:.2f} ms, against {base:.2f} ms in the rounds above: the drift of this "
                      f"machine's timings between moments.\n")
    body = f"""
{config.model} on {config.data}, {config.device}. `uniform`: one ratio in every group; `searched`: best
adaptive-BN proxy of {trials} `random` trials at that budget. Latency: forward pass in eval mode,
channels_last, median of 3 interleaved rounds of 30 timed passes. A speedup / MAC reduction of 1.0 means
the time fell as much as the MACs.

""" + "\n".join(lines) + "\n" + extra + """
![latency vs MACs](speedup.png)

Files: speedup.csv, runs/ (the searches).
"""
    bench.write_summary("Measured speedup against MAC reduction", body)
