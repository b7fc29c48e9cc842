"""Pareto front, plot and markdown report of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from autoprune.budget import Budget
from autoprune.candidate import complete_scores
from autoprune.pareto import non_dominated
from autoprune.pruning.space import Cost
from autoprune.results import SubnetSpec, atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# x axis of each accuracy-vs-cost plot: the cost key shared by spec.json, the baseline and budget constraints,
# its label, its scale and the trials.csv column of the candidates' (a candidate's latency is predicted)
COSTS = {"macs": ("MACs (millions; FLOPs = 2 x MACs)", 1e-6, "macs"),
         "latency_ms": ("latency (ms): subnets measured on the target, candidates predicted", 1.0,
                        "predicted_latency_ms")}


def export_run(
    run_dir: Path,
    *,
    config: dict,
    budget: Budget,
    base: Cost,
    baseline: dict,
    trials: pd.DataFrame,
    subnets: Sequence[SubnetSpec],
    timings: dict[str, float],
) -> list[SubnetSpec]:
    """Write pareto.csv/.json, pareto.png and report.md; return the front. ``baseline``: the unpruned model's
    ``macs``, ``params``, ``latency_ms``, ``proxy_acc`` and ``test_acc`` (fractions)."""
    front = pareto_front(subnets)
    pd.DataFrame([s.row() for s in front]).to_csv(run_dir / "pareto.csv", index=False)
    payload = {"budget": config["budget"], "baseline": baseline, "front": [s.front_record() for s in front]}
    atomic_write(run_dir / "pareto.json", json.dumps(payload, indent=2) + "\n")
    macs = [c for c in budget.constraints if c.metric == "macs"]
    limit = (macs[0].limit(base), macs[0].text) if macs else None
    plot_pareto(run_dir / "pareto.png", trials, subnets, baseline, limit)
    latency = json.loads((run_dir / "latency.json").read_text()) if (run_dir / "latency.json").is_file() else None
    write_report(run_dir / "report.md", config=config, budget_text=budget.describe(base), baseline=baseline,
                 budget=budget, base=base, subnets=subnets, front=front, trials=trials, timings=timings,
                 latency=latency)
    return front


def space_tables(config: Mapping) -> tuple[list[tuple[str, ...]], list[tuple[str, str]], str]:
    """What a run searched, from its config.yaml: one row per group (name, channels, step and why,
    member layers), one per layer never pruned (layer, why), and a line on how costs were counted.
    report.md, report.html and ``autoprune inspect`` all print these."""
    groups = [(g["name"], str(g["channels"]),
               str(g.get("step", 1)) + (f" ({'; '.join(g['rules'])})" if g.get("rules") else ""),
               ", ".join(g.get("members", [])))
              for g in config.get("groups", [])]
    unprunable = sorted((config.get("unprunable") or config.get("unprunable_groups") or {}).items())
    return groups, unprunable, describe_cost_check(config.get("cost_check") or {})


def describe_cost_check(check: Mapping) -> str:
    """One line on how a space counts MACs and params (``PruningSpace.cost_check``)."""
    if not check.get("subnets"):
        return "MACs and params: analytic (conv and linear layers)."
    if check["mode"] == "analytic":
        return (f"MACs and params: analytic, equal to the count traced from the running network on the baseline "
                f"and {check['subnets'] - 1} pruned subnets.")
    return (f"MACs and params: traced from each candidate's pruned network; the analytic model was off by up to "
            f"{check['max_relative_error']:.2%} on this model (an op it does not model).")


def as_number(value: Any) -> float | None:
    """A number, or None for a missing one (None or NaN: old runs, unscored trials)."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return None if missing else float(value)


def pareto_front(records: Sequence[SubnetSpec]) -> list[SubnetSpec]:
    """Fine-tuned subnets not beaten on both test accuracy and MACs, cheapest first."""
    return non_dominated(records, lambda r: r.test_acc, lambda r: r.macs)


def plot_pareto(path: Path, trials: pd.DataFrame, subnets: Sequence[SubnetSpec], baseline: dict,
                limit: tuple[float, str] | None) -> None:
    """pareto.png: accuracy against MACs (``draw_front``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120, layout="tight")
    ax = fig.subplots()
    draw_front(ax, "macs", complete_scores(trials), subnets, baseline, limit)
    ax.set_title("accuracy vs cost")
    fig.savefig(path)


def pareto_subnets(subnets: Sequence[SubnetSpec], cost: str) -> list[SubnetSpec]:
    """Subnets not beaten on both test accuracy and ``cost`` (``macs`` or ``latency_ms``; those without it, NaN
    or None, left out), cheapest first: on MACs, the front of pareto.json."""
    return non_dominated([s for s in subnets if as_number(getattr(s, cost)) is not None],
                         lambda s: s.test_acc, lambda s: getattr(s, cost))


def draw_front(ax: Axes, cost: str, candidates: pd.DataFrame, subnets: Sequence[SubnetSpec],
               baseline: Mapping | None, limit: tuple[float, str] | None) -> list[SubnetSpec]:
    """Accuracy vs ``cost`` (a key of ``COSTS``) on ``ax``: candidates' proxy accuracy in grey,
    fine-tuned subnets' test accuracy, their Pareto front, the baseline star and the budget line
    (``limit``: ceiling and budget text). Returns the front, cheapest first."""
    label, scale, column = COSTS[cost]
    subnets = [s for s in subnets if as_number(getattr(s, cost)) is not None]
    front = pareto_subnets(subnets, cost)
    if len(candidates):
        ax.scatter(candidates[column] * scale, candidates["proxy_acc"] * 100, s=14, alpha=0.3,
                   color="tab:gray", label="candidates (adaptive-BN proxy, holdout)")
    if subnets:
        ax.scatter([getattr(s, cost) * scale for s in subnets], [s.test_acc * 100 for s in subnets],
                   s=40, color="tab:blue", label="fine-tuned subnets (test)")
        ax.plot([getattr(s, cost) * scale for s in front], [s.test_acc * 100 for s in front], "-o",
                color="tab:red", label="Pareto front (test)")
        for i, s in enumerate(front):  # ids below and above by turns: neighbours' do not collide
            ax.annotate(s.id, (getattr(s, cost) * scale, s.test_acc * 100), textcoords="offset points",
                        xytext=(4, 5 if i % 2 else -11), fontsize=7, color="tab:red")
    if baseline and as_number(baseline.get(cost)) is not None:
        ax.scatter([baseline[cost] * scale], [baseline["test_acc"] * 100], marker="*", s=160,
                   color="black", label="baseline (test)")
    if limit is not None:
        predicted = " (bounds predicted latency)" if cost == "latency_ms" else ""
        ax.axvline(limit[0] * scale, color="tab:green", linestyle="--",
                   label=f"budget {limit[1]}{predicted}")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return front


def latency_note(config: Mapping, latency: Mapping | None) -> str:
    """How latency was measured: on the run's target (latency.json), else as older runs did."""
    if latency is None:
        return f"Latency: median of timed forward passes at batch {config['latency_batch']} on {config['device']}."
    return (f"Latency: measured on {latency['describe']}, each subnet as it ships (exported for onnxruntime) beside "
            f"the unpruned model in {latency['baseline']['rounds']} interleaved rounds: the median round, "
            "(lowest-highest round) after it. Speedup: the unpruned model's time over the subnet's, paired round "
            "by round.")


def describe_latency(s: SubnetSpec) -> str:
    """A subnet's measured latency in ms with its spread where known: ``0.412 (0.405-0.431)``."""
    spread = f" ({s.latency_spread[0]:.3f}-{s.latency_spread[1]:.3f})" if s.latency_spread else ""
    return f"{s.latency_ms:.3f}{spread}"


def describe_speedup(s: SubnetSpec) -> str:
    """A subnet's measured speedup over the unpruned model with its spread: ``1.72x (1.65-1.80)``; empty for a
    subnet measured before speedups were."""
    if s.speedup is None:
        return ""
    spread = f" ({s.speedup_spread[0]:.2f}-{s.speedup_spread[1]:.2f})" if s.speedup_spread else ""
    return f"{s.speedup:.2f}x{spread}"


def latency_verdicts(subnets: Sequence[SubnetSpec], budget: Budget, base: Cost) -> list[tuple[SubnetSpec, str, bool]]:
    """Per subnet and latency constraint of ``budget``: the measurement against it in words, and whether the
    measurement (not the prediction) meets it; empty for a budget without latency. A share of the unpruned
    model's latency (``50%latency``) is judged by the speedup measured beside the unpruned model (at least
    1 / 0.5 = 2x), which holds where the machine's pace drifts between set-up and verdict; an absolute ceiling
    (``8ms``) by the subnet's measured ms."""
    verdicts = []
    for c in (c for c in budget.constraints if c.metric == "latency_ms"):
        for s in subnets:
            if c.fraction is not None and s.speedup is not None:
                need = 1 / c.fraction
                text = (f"{describe_speedup(s)} measured beside the unpruned model against the {need:.2f}x "
                        f"that {c.text} asks")
                verdicts.append((s, text, s.speedup >= need))
            elif as_number(s.latency_ms) is not None:
                limit = c.limit(base)
                text = f"{s.latency_ms:.3f} ms measured against {limit:.3f} ms"
                verdicts.append((s, text, s.latency_ms <= limit))
    return verdicts


def predictor_lines(subnets: Sequence[SubnetSpec], latency: Mapping | None, budget: Budget | None = None,
                    base: Cost | None = None) -> list[str]:
    """report.md's lines on the latency predictor: predicted vs measured for each fine-tuned subnet, the check on
    held-out subnets (MAPE, Spearman), and each subnet's verdict under a latency budget, by measurement."""
    lines = []
    predicted = [s for s in subnets if s.predicted_latency_ms is not None]
    if predicted:
        lines += ["", "Predicted (the target's latency table) vs measured latency:", "",
                  "| subnet | predicted (ms) | measured (ms) | error |", "|---|---:|---:|---:|"]
        for s in predicted:
            error = s.predicted_latency_ms / s.latency_ms - 1
            lines.append(f"| {s.id} | {s.predicted_latency_ms:.3f} | {describe_latency(s)} | {error:+.1%} |")
    if latency is not None:
        from autoprune.measure.predictor import Measured, PredictorCheck, ceiling_line

        check = PredictorCheck.from_record(latency.get("check"))
        ceiling = ceiling_line([Measured(**m) for m in latency.get("calibration", [])])
        if ceiling is not None:
            lines += ["", f"The {ceiling}."]
        calibrated = ", ".join(m["id"] for m in latency.get("calibration", []))
        lines += ["", (f"The {check.describe()} (subnets drawn across the space before the search, each exported "
                       "and timed beside the unpruned model; the predictor was calibrated on the unpruned model and "
                       f"the subnets {calibrated or 'none'}, not these).")]
        if check.pairs:
            lines += ["", "| held-out subnet | MACs (M) | predicted (ms) | measured (ms) | error | speedup |",
                      "|---|---:|---:|---:|---:|---:|"]
            for m in check.pairs:
                macs = f"{m.macs / 1e6:.2f}" if m.macs is not None else ""
                lines.append(f"| {m.id} | {macs} | {m.predicted_ms:.3f} | {m.ms:.3f} ({m.low:.3f}-{m.high:.3f}) | "
                             f"{m.error:+.1%} | {m.speedup:.2f}x |")
    if budget is not None and base is not None:
        verdicts = latency_verdicts(subnets, budget, base)
        if verdicts:
            lines += ["", "Latency budget, judged by the measurement:", ""]
            lines += [f"- {s.id}: {text}: {'met' if met else 'NOT met'}" for s, text, met in verdicts]
    return lines


def write_report(
    path: Path,
    *,
    config: dict,
    budget_text: str,
    baseline: dict,
    budget: Budget | None = None,
    base: Cost | None = None,
    subnets: Sequence[SubnetSpec],
    front: Sequence[SubnetSpec],
    trials: pd.DataFrame,
    timings: dict[str, float],
    latency: Mapping | None = None,
) -> None:
    """report.md: the settings (``config``, config.yaml's), the baseline vs the fine-tuned subnets (MACs in
    millions, latency in ms, accuracies in percent, the ``front`` marked), predicted vs measured latency, the
    search (from trials.csv's ``trials``), what was searched and the seconds each phase took. ``latency``: the run's
    latency.json (``autoprune.deployment``), its target and predictor check."""
    base_macs, base_params = baseline["macs"], baseline["params"]
    front_ids = {s.id for s in front}
    if config.get("granularity") == "weight":
        what = f"weights zeroed by magnitude (mask scope {config['mask_scope']})"
        units = ("MACs and params count what a sparse kernel would do: the multiplications by zeroed weights and "
                 "the zeros themselves are left out. Dense kernels run them all: latency does not fall with them.")
    else:
        what = f"channels, criterion {config['criterion']}"
        units = "MACs count multiply-accumulates of conv and linear layers; FLOPs = 2 x MACs."
    if config.get("sparsity_train"):
        what += f", after {config['sparsity_train']:g} epochs of sparsity training (lambda {config['sparsity_lambda']:g})"
    lines = [
        f"# autoprune run: {config['model']} on {config['data']}",
        "",
        f"- budget: {budget_text}",
        f"- strategy: {config['strategy']}, pruning {what}, trials: {config['trials']}",
        (
            f"- scoring: {'adaptive BN' if config['adaptive_bn'] else 'vanilla (no BN recalibration)'}"
            f" with {config['calib_batches']} calibration batches of {config['batch_size']}, "
            f"{min(config['score_images'], config.get('data_summary', {}).get('holdout', config['score_images']))} "
            "held-out training images"
        ),
        (
            f"- fine-tuning: top {config['finetune_top']} for {config['finetune_epochs']} epochs "
            f"(lr {config['finetune_lr']}, SGD, cosine)"
        ),
        "",
        units,
        "",
        "## Baseline vs subnets",
        "",
        latency_note(config, latency),
        "",
        (
            "| subnet | MACs (M) | MACs % | params (M) | latency (ms) | speedup | proxy acc | test acc | "
            "delta vs baseline | Pareto | trained after pruning |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
        (
            f"| baseline | {base_macs / 1e6:.2f} | 100.0 | {base_params / 1e6:.3f} | {baseline['latency_ms']:.3f} | | "
            f"{baseline['proxy_acc']:.2%} | {baseline['test_acc']:.2%} | | | |"
        ),
    ]
    for s in sorted(subnets, key=lambda r: -r.test_acc):
        lines.append(
            f"| {s.id} | {s.macs / 1e6:.2f} | {100 * s.macs / base_macs:.1f} | {s.params / 1e6:.3f} | "
            f"{describe_latency(s)} | {describe_speedup(s)} | {s.proxy_acc:.2%} | {s.test_acc:.2%} | "
            f"{100 * (s.test_acc - baseline['test_acc']):+.2f} pp | {'yes' if s.id in front_ids else ''} | "
            f"{s.retrain_text} |"
        )
    lines += predictor_lines(subnets, latency, budget, base)
    if not subnets and config["finetune_top"] > 0:
        lines += ["", ("**No candidate was scored in full within the budget**: no subnet was fine-tuned. Try "
                       "more `--trials`, `--pruner none` or a looser budget.")]
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    scored = complete_scores(trials)
    lines += [
        "",
        "![accuracy vs MACs](pareto.png)",
        "",
        "## Search",
        "",
        f"- trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))})",
    ]
    if len(scored):
        lines.append(
            f"- proxy accuracy of scored candidates: best {scored['proxy_acc'].max():.2%}, "
            f"median {scored['proxy_acc'].median():.2%}; median {scored['seconds'].median():.2f} s per candidate"
        )
    if len(scored) and scored["prune_seconds"].notna().any():
        lines.append(
            f"- median seconds per scored candidate: prune {scored['prune_seconds'].median():.3f}, "
            f"recalibrate {scored['recalibrate_seconds'].median():.3f}, evaluate {scored['evaluate_seconds'].median():.3f}"
        )
    draws = trials["draws"].dropna() if "draws" in trials else []
    if len(draws):
        lines.append(
            f"- random sampling: {len(draws)} candidates from {int(draws.sum())} draws "
            f"(acceptance {len(draws) / draws.sum():.1%})"
        )
    groups, unprunable, cost_line = space_tables(config)
    if groups:
        lines += ["", "## What was searched", "", cost_line, "", "| group | channels | step | layers |",
                  "|---|---:|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in groups]
    if unprunable:
        lines += ["", "Layers never pruned:", "", "| layer | why |", "|---|---|"]
        lines += [f"| {name} | {why} |" for name, why in unprunable]
    lines += ["", "## Time spent", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in timings.items()]
    lines += ["", "Subnets load with `autoprune.load_subnet('subnets/<id>')`.", ""]
    path.write_text("\n".join(lines))
