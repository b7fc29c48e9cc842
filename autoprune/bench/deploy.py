"""Deployed latency: the same subnets in PyTorch, as a torch.export program and in onnxruntime,
at the widths pruning leaves and at widths rounded to a multiple of ``round_to``.

At each budget, the uniform L1 subnet of the model family's space and the one of the same space
with ``round_to`` set are exported (ONNX and torch.export, each checked against PyTorch) and timed
in every runtime next to the unpruned model, in interleaved rounds in one process. The exports go
to a temporary directory: the study's command makes them again.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

from autoprune.bench.common import BenchDir, figure
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.export import (
    CHECK_BATCH,
    FORMATS,
    check_formats,
    check_inputs,
    compare,
    time_export,
    write_export,
)
from autoprune.pruning.space import PruningSpace
from autoprune.search.allocation import uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator

# runtime -> (the export it runs, None for the model itself; whether it runs in channels_last)
RUNTIMES = {"pytorch": (None, True), "torch-export": ("torch-export", True), "torch-export NCHW": ("torch-export", False),
            "onnxruntime": ("onnx", False)}


def check(*, budgets: list[str], latency_batches: list[int], round_to: int, **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for no latency
    batch sizes or one below 1, no budgets or a malformed or latency budget, or ``round_to`` below 2; also
    where ONNX export is not installed (``check_formats``)."""
    if not latency_batches or min(latency_batches) < 1:
        raise UserError("--latency-batches must name batch sizes of at least 1")
    if not budgets or any(parse_budget(text).needs_latency for text in budgets):
        raise UserError("--budgets must name MAC or parameter budgets")
    if round_to < 2:
        raise UserError("--round-to must be at least 2 (1 is the unrounded arm)")
    check_formats(["onnx", "torch-export"])


def run(config: SearchConfig, bench: BenchDir, *, budgets: list[str], latency_batches: list[int], round_to: int,
        quiet: bool = False, rounds: int = 3) -> pd.DataFrame:
    """Export the uniform subnet at each budget, with widths as the space leaves them and rounded to
    ``round_to``, and the unpruned model; time every runtime of ``RUNTIMES`` at each batch (the median of
    ``rounds`` interleaved rounds). Returns the table of deploy.csv.

    Per model: MACs and params as % of the unpruned model, the adaptive-BN proxy accuracy (a fraction), the
    conv widths, the exports' largest absolute difference from PyTorch, and per runtime and batch the
    latency in ms and the speedup over the unpruned model. Raises ``RuntimeError`` where an export differs
    from PyTorch beyond its tolerance. Also writes the plots and summary.md.
    """
    data, model, space = load_workbench(config)
    rounded = PruningSpace(model, data.example_input(), dataclasses.replace(space.config, round_to=round_to),
                           orders=space.orders)  # the same channel ranking, widths rounded
    evaluator = make_evaluator(config, data)
    base = space.base_cost
    arms = {"unpruned": ("", 1, space.model, base)}
    for text in budgets:
        for step, s in ((space.config.round_to, space), (round_to, rounded)):
            ratios = uniform_at_budget(s, parse_budget(text))
            if ratios is None:
                bench.log(f"{text}, round_to {step}: no uniform ratio fits; skipped")
                continue
            arms[f"{text} round_to {step}"] = (text, step, s.prune(ratios)[0], s.cost(ratios))
    scores = bench.done("proxy")
    if scores is None:
        bench.log(f"scoring {len(arms)} models by adaptive BN")
        scores = bench.record("proxy", {name: evaluator.score(copy.deepcopy(arm[2])) for name, arm in arms.items()})
    latency = bench.done("latency")
    if latency is None:
        bench.log(f"exporting {len(arms)} models and timing them in {', '.join(RUNTIMES)} "
                  f"at batch {', '.join(map(str, latency_batches))}")
        latency = bench.record("latency", _time_runtimes({name: arm[2] for name, arm in arms.items()},
                                                         data.input_shape, latency_batches, rounds))
    rows = []
    for name, (budget, step, subnet, cost) in arms.items():
        widths = sorted({m.out_channels for m in subnet.modules() if isinstance(m, torch.nn.Conv2d)})
        row = {"model": name, "budget": budget, "round_to": step, "macs_pct": 100 * cost.macs / base.macs,
               "params_pct": 100 * cost.params / base.params, "proxy_acc": scores[name],
               "conv_widths": " ".join(map(str, widths)), "max_abs_diff": latency[name]["max_abs_diff"]}
        for runtime in RUNTIMES:
            for b in latency_batches:
                ms = latency[name][f"{runtime} b{b}"]
                row[f"{runtime}_b{b}_ms"] = ms
                row[f"{runtime}_b{b}_speedup"] = latency["unpruned"][f"{runtime} b{b}"] / ms
        rows.append(row)
    frame = pd.DataFrame(rows)
    bench.write_csv("deploy.csv", frame)
    _plot(bench, frame, latency_batches)
    _summary(bench, config, frame, latency_batches, rounds)
    return frame


def _time_runtimes(models: dict[str, torch.nn.Module], input_shape: tuple[int, ...], batches: list[int],
                   rounds: int) -> dict[str, dict[str, float]]:
    """Export every model, check each export against PyTorch, then time every runtime at every batch:
    the median of ``rounds`` rounds that take every model and runtime in turn."""
    example = check_inputs(input_shape)
    runners, diffs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            model = copy.deepcopy(model).eval()
            loaded = {}
            diffs[name] = 0.0
            for fmt in ("torch-export", "onnx"):
                path = Path(tmp) / f"{len(runners)}{Path(FORMATS[fmt]).suffix}"
                _, loaded[fmt] = write_export(model, fmt, path, example)
                diff, tolerance = compare(loaded[fmt], model, example)
                if diff > tolerance:
                    raise RuntimeError(f"{name}: the {fmt} export differs from PyTorch by {diff:.2e}")
                diffs[name] = max(diffs[name], diff)
            runners[name] = {runtime: model if fmt is None else loaded[fmt] for runtime, (fmt, _) in RUNTIMES.items()}
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in models}
        for _ in range(rounds):
            for name, per in runners.items():
                for runtime, run in per.items():
                    for b in batches:
                        ms = time_export(run, input_shape, b, channels_last=RUNTIMES[runtime][1])
                        samples[name].setdefault(f"{runtime} b{b}", []).append(ms)
    return {name: {**{k: statistics.median(v) for k, v in per.items()}, "max_abs_diff": diffs[name]}
            for name, per in samples.items()}


def _plot(bench: BenchDir, frame: pd.DataFrame, batches: list[int]) -> None:
    fig, axes = figure(len(batches), width=5.5)
    for ax, b in zip(axes[0], batches):
        for runtime, color in zip(RUNTIMES, ("tab:blue", "tab:orange", "tab:red", "tab:green")):
            for step, marker, style in ((None, "*", ""), (1, "o", "-"), (frame["round_to"].max(), "s", "--")):
                t = frame[frame["budget"] == ""] if step is None else frame[(frame["budget"] != "")
                                                                            & (frame["round_to"] == step)]
                label = None if step is None else f"{runtime}, round_to {step}"
                ax.plot(t["macs_pct"], t[f"{runtime}_b{b}_ms"], marker=marker, linestyle=style, color=color,
                        label=label)
        ax.set_xlabel("MACs (% of the unpruned model; * unpruned)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"batch {b}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    bench.save_figure(fig, "deploy.png")


def _summary(bench: BenchDir, config: SearchConfig, frame: pd.DataFrame, batches: list[int], rounds: int) -> None:
    head = "| model | MACs % | proxy accuracy | conv widths | " + " | ".join(
        f"{runtime} b{b} ms (speedup)" for b in batches for runtime in RUNTIMES) + " |"
    lines = [head, "|---|---:|---:|---|" + "---:|" * (len(batches) * len(RUNTIMES))]
    for _, r in frame.iterrows():
        cells = " | ".join(f"{r[f'{runtime}_b{b}_ms']:.2f} ({r[f'{runtime}_b{b}_speedup']:.2f}x)"
                           for b in batches for runtime in RUNTIMES)
        lines.append(f"| {r['model']} | {r['macs_pct']:.1f} | {r['proxy_acc']:.2%} | {r['conv_widths']} | {cells} |")
    body = f"""
{config.model} on {config.data}, on the CPU with {torch.get_num_threads()} threads. At each budget, the uniform
L1 subnet of the model family's search space (`round_to` as the space file says) and of the same space with
its widths rounded to a multiple of `--round-to`, next to the unpruned model. Each is exported as ONNX and as a
torch.export program (`autoprune export`'s code; outputs checked against PyTorch on {CHECK_BATCH} random
inputs: largest difference {frame['max_abs_diff'].max():.1e}) and timed in PyTorch (eager, weights and input
in channels_last), the loaded torch.export program (in channels_last, and as loaded: NCHW) and onnxruntime
(CPU provider, as many threads as PyTorch). Latency: forward pass, median of {rounds} interleaved rounds of 30 timed passes; speedup
against the unpruned model in the same runtime. Proxy: adaptive-BN accuracy on {config.score_images}
held-out images before any fine-tuning.

""" + "\n".join(lines) + """

![latency vs MACs per runtime](deploy.png)

Files: deploy.csv.
"""
    bench.write_summary("Deployed latency: PyTorch, torch.export and onnxruntime", body)
