"""Pareto front, plot and markdown report of a run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from autoprune.budget import Budget
from autoprune.pareto import non_dominated
from autoprune.pruning.space import Cost
from autoprune.results import SubnetRecord


def export_run(
    run_dir: Path,
    *,
    config: dict,
    budget: Budget,
    base: Cost,
    baseline: dict,
    trials: pd.DataFrame,
    subnets: Sequence[SubnetRecord],
    timings: dict[str, float],
) -> list[SubnetRecord]:
    """Write pareto.csv/.json, pareto.png and report.md; return the front."""
    front = pareto_front(subnets)
    pd.DataFrame([s.row() for s in front]).to_csv(run_dir / "pareto.csv", index=False)
    payload = {"budget": config["budget"], "baseline": baseline, "front": [asdict(s) for s in front]}
    (run_dir / "pareto.json").write_text(json.dumps(payload, indent=2) + "\n")
    limit = budget.primary.limit(base) if budget.primary.metric == "macs" else None
    plot_pareto(run_dir / "pareto.png", trials, subnets, front, baseline, limit)
    write_report(run_dir / "report.md", config=config, budget_text=budget.describe(base), baseline=baseline,
                 subnets=subnets, front=front, trials=trials, timings=timings)
    return front


def pareto_front(records: Sequence[SubnetRecord]) -> list[SubnetRecord]:
    """Fine-tuned subnets not beaten on both test accuracy and MACs, cheapest first."""
    return non_dominated(records, lambda r: r.test_acc, lambda r: r.macs)


def plot_pareto(
    path: Path,
    trials: pd.DataFrame,
    subnets: Sequence[SubnetRecord],
    front: Sequence[SubnetRecord],
    baseline: dict,
    budget_macs: float | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_macs = baseline["macs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    scored = trials[trials["proxy_acc"].notna()]
    if len(scored):
        ax.scatter(scored["macs"] / 1e6, scored["proxy_acc"] * 100, s=14, alpha=0.3, color="tab:gray",
                   label="candidates (adaptive-BN proxy, holdout)")
    if subnets:
        ax.scatter([s.macs / 1e6 for s in subnets], [s.test_acc * 100 for s in subnets], s=40,
                   color="tab:blue", label="fine-tuned subnets (test)")
    if front:
        ax.plot([s.macs / 1e6 for s in front], [s.test_acc * 100 for s in front], "-o", color="tab:red",
                label="Pareto front (test)")
    ax.scatter([base_macs / 1e6], [baseline["test_acc"] * 100], marker="*", s=160, color="black",
               label="baseline (test)")
    if budget_macs is not None:
        ax.axvline(budget_macs / 1e6, color="tab:green", linestyle="--", label="budget")
    ax.set_xlabel("MACs (millions; FLOPs = 2 x MACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    path: Path,
    *,
    config: dict,
    budget_text: str,
    baseline: dict,
    subnets: Sequence[SubnetRecord],
    front: Sequence[SubnetRecord],
    trials: pd.DataFrame,
    timings: dict[str, float],
) -> None:
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
            f"{config['score_images']} held-out training images"
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
        f"Latency: median of timed forward passes at batch {config['latency_batch']} on {config['device']}.",
        "",
        (
            "| subnet | MACs (M) | MACs % | params (M) | latency (ms) | proxy acc | test acc | delta vs baseline "
            "| Pareto | trained after pruning |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
        (
            f"| baseline | {base_macs / 1e6:.2f} | 100.0 | {base_params / 1e6:.3f} | {baseline['latency_ms']:.2f} | "
            f"{baseline['proxy_acc']:.2%} | {baseline['test_acc']:.2%} | | | |"
        ),
    ]
    for s in sorted(subnets, key=lambda r: -r.test_acc):
        lines.append(
            f"| {s.id} | {s.macs / 1e6:.2f} | {100 * s.macs / base_macs:.1f} | {s.params / 1e6:.3f} | "
            f"{s.latency_ms:.2f} | {s.proxy_acc:.2%} | {s.test_acc:.2%} | "
            f"{100 * (s.test_acc - baseline['test_acc']):+.2f} pp | {'yes' if s.id in front_ids else ''} | "
            f"{s.retrain} |"
        )
    predicted = [s for s in subnets if s.predicted_latency_ms is not None]
    if predicted:
        lines += ["", "Predicted (latency table) vs measured latency:", "",
                  "| subnet | predicted (ms) | measured (ms) | error |", "|---|---:|---:|---:|"]
        for s in predicted:
            error = s.predicted_latency_ms / s.latency_ms - 1
            lines.append(f"| {s.id} | {s.predicted_latency_ms:.3f} | {s.latency_ms:.3f} | {error:+.1%} |")
    if not subnets and config["finetune_top"] > 0:
        lines += ["", ("**No candidate met the budget**: no subnet was fine-tuned. Try `--warm-start`, "
                       "`--strategy random`, more `--trials` or a looser budget.")]
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    scored = trials[trials["proxy_acc"].notna()] if len(trials) else trials
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
    lines += ["", "## Time spent", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in timings.items()]
    lines += ["", "Subnets load with `autoprune.load_subnet('subnets/<id>')`.", ""]
    path.write_text("\n".join(lines))
