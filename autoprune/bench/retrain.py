"""How to train the pruned network: fine-tune, lottery rewind, or from scratch (Scratch-E, Scratch-B).

A lottery ticket needs the weights the baseline started from, which a shipped checkpoint does not
keep; so the study trains its own baseline with ``autoprune train --save-init --save-init-epoch K``
(or takes ``--weights`` of one trained so). At the budget, the uniform ratios (one ratio in every
group, the largest that fits, channels ranked on the trained weights) give one architecture, and
each method trains it with the same seeds: fine-tune from the trained weights; rewind the kept
weights to the initialisation, or to their values after epoch K; a fresh initialisation trained for
the same epochs (Scratch-E) or for the compute of the unpruned network over them (Scratch-B).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from autoprune.bench.common import BenchDir, figure
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.finetuning import finetune_candidate
from autoprune.measure import accuracy
from autoprune.retrain import rewind_weights_path
from autoprune.search.allocation import uniform_at_budget
from autoprune.workbench import load_workbench, make_evaluator


def check(*, budget: str, base_epochs: float, rewind_epoch: int, finetune_seeds: int, **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed
    or latency budget, ``base_epochs`` not positive, ``rewind_epoch`` outside 1..``base_epochs``, or fewer
    than 1 fine-tune seed."""
    if parse_budget(budget).needs_latency:
        raise UserError("--budget: give a flops or params budget")
    if base_epochs <= 0 or not 1 <= rewind_epoch <= base_epochs or finetune_seeds < 1:
        raise UserError("--base-epochs must be positive, --rewind-epoch between 1 and it, --finetune-seeds at least 1")


def run(config: SearchConfig, bench: BenchDir, *, budget: str, base_epochs: float, base_lr: float, rewind_epoch: int,
        finetune_epochs: float, finetune_seeds: int, quiet: bool = False) -> pd.DataFrame:
    """Train the uniform subnet at ``budget`` by fine-tuning, lottery rewinding to the initialisation and to
    epoch ``rewind_epoch`` (Frankle & Carbin 2019; Frankle et al. 2020), Scratch-E and Scratch-B (Liu et al.
    2019), each with ``finetune_seeds`` seeds; returns the table of retrain.csv.

    Per method: epochs trained, mean seconds, and the test accuracy's mean, min and max over the seeds
    (fractions in [0, 1]). The baseline is ``--weights`` (its rewind points must lie next to it) or, where
    none is given, one trained here for ``base_epochs`` at ``base_lr``. Raises ``UserError`` where no
    uniform ratio meets the budget, ``--weights`` lacks its rewind points, or training the baseline fails.
    Also writes runs.csv, the plot and summary.md.
    """
    config = replace(config, finetune_epochs=finetune_epochs, weights=_ticket(config, bench, base_epochs, base_lr,
                                                                              rewind_epoch, quiet))
    data, model, space = load_workbench(config)
    evaluator = make_evaluator(config, data)
    ratios = uniform_at_budget(space, parse_budget(budget))
    if ratios is None:
        raise UserError(f"no uniform ratio meets {budget}")
    base = bench.done("unpruned") or bench.record("unpruned", {"test_acc": accuracy(model, data.test,
                                                                                    device=config.device)})
    methods = {"fine-tune": {}, "lottery (init)": {"rewind": "lottery"},
               f"lottery (epoch {rewind_epoch})": {"rewind": "lottery", "rewind_epoch": rewind_epoch},
               "scratch-e": {"rewind": "scratch-e"}, "scratch-b": {"rewind": "scratch-b"}}
    seeds = [config.seed + 1 + j for j in range(finetune_seeds)]
    rows = []
    for method, options in methods.items():
        for seed in seeds:
            key = f"{method} seed {seed}"
            result = bench.done(key)
            if result is None:
                done = finetune_candidate(space, evaluator, replace(config, **options), data, ratios, seed=seed)
                result = bench.record(key, {"test_acc": done.test_acc, "epochs": round(done.epochs, 3),
                                            "seconds": round(done.seconds, 1)})
                bench.log(f"{key}: {result['test_acc']:.2%} after {result['epochs']:g} epochs")
            rows.append({"method": method, "seed": seed, **result})
    runs = pd.DataFrame(rows)
    bench.write_csv("runs.csv", runs)
    table = runs.groupby("method", sort=False).agg(
        epochs=("epochs", "first"), seconds=("seconds", "mean"), test_mean=("test_acc", "mean"),
        test_min=("test_acc", "min"), test_max=("test_acc", "max"), seeds=("seed", "count")).reset_index()
    bench.write_csv("retrain.csv", table)
    _plot(bench, table, base["test_acc"])
    macs_pct = 100 * space.cost(ratios).macs / space.base_cost.macs
    _summary(bench, config, table, base["test_acc"], budget, macs_pct, seeds, base_epochs, base_lr, rewind_epoch)
    return table


def _ticket(config: SearchConfig, bench: BenchDir, epochs: float, lr: float, rewind_epoch: int, quiet: bool) -> str:
    """The baseline weights, with the rewind points next to them: ``--weights`` if it has them, else trained
    here (again on resume where the weights are gone: git keeps a study's record, not its ``*.pt``)."""
    if config.weights is not None:
        missing = [p for p in (rewind_weights_path(config.weights), rewind_weights_path(config.weights, rewind_epoch))
                   if not p.is_file()]
        if missing:
            raise UserError(f"--weights: {', '.join(map(str, missing))} not found; train the baseline with "
                            f"`autoprune train --save-init --save-init-epoch {rewind_epoch}`, or leave --weights out "
                            "and the study trains one")
        return config.weights
    path = bench.path / "baseline" / "model.pt"
    if bench.done("baseline") and not path.is_file():  # committed results keep the record, not the weights
        bench.log(f"{path} is missing: training the baseline again with the same command and seed")
    if not bench.done("baseline") or not path.is_file():
        from autoprune.cli import main

        args = ["train", "--model", config.model, "--data", config.data, "--epochs", f"{epochs:g}", "--lr", f"{lr:g}",
                "--seed", str(config.seed), "--holdout", str(config.holdout), "--batch-size", str(config.batch_size),
                "--device", config.device, "--save-init", "--save-init-epoch", str(rewind_epoch), "--out", str(path)]
        if config.limit_train is not None:
            args += ["--limit-train", str(config.limit_train)]
        if config.amp:
            args.append("--amp")
        if quiet:
            args.append("--quiet")
        bench.log(f"training the baseline: autoprune {' '.join(args)}")
        if main(args) != 0:
            raise UserError("training the study's baseline failed")
        bench.record("baseline", json.loads(path.with_suffix(".json").read_text()))  # with the command
    return str(Path(path).resolve())


def _plot(bench: BenchDir, table: pd.DataFrame, unpruned: float) -> None:
    fig, axes = figure(1, width=7.0)
    ax = axes[0][0]
    x = range(len(table))
    ax.errorbar(list(x), 100 * table["test_mean"], yerr=[100 * (table["test_mean"] - table["test_min"]),
                                                         100 * (table["test_max"] - table["test_mean"])],
                fmt="o", capsize=4)
    ax.axhline(100 * unpruned, color="grey", linestyle="--", label="unpruned baseline")
    ax.set_xticks(list(x), [f"{m}\n{e:g} epochs" for m, e in zip(table["method"], table["epochs"])], fontsize=8)
    ax.set_ylabel("test accuracy (%; mean and seed range)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    bench.save_figure(fig, "retrain.png")


def _summary(bench, config, table, unpruned, budget, macs_pct, seeds, base_epochs, base_lr, rewind_epoch) -> None:
    lines = ["| method | epochs trained | test accuracy (mean, range) | seconds per run |", "|---|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.method} | {r.epochs:g} | {r.test_mean:.2%} ({r.test_min:.2%}-{r.test_max:.2%}) | "
                     f"{r.seconds:.0f} |")
    baseline = bench.done("baseline")
    origin = (f"trained here for {base_epochs:g} epochs at lr {base_lr:g} (`{baseline['command']}`)" if baseline
              else f"`{config.weights}`")
    body = f"""
{config.model} on {config.data}. Baseline: {origin}; test accuracy {unpruned:.2%}. At {budget} the uniform
ratios keep {macs_pct:.1f}% of MACs; every method trains that architecture (channels chosen by
{config.criterion} on the trained weights) for {config.finetune_epochs:g} epochs at lr {config.finetune_lr:g}, except
Scratch-B, which gets the compute of {config.finetune_epochs:g} epochs of the unpruned network; seeds
{', '.join(map(str, seeds))}. Lottery: the kept weights rewound to the initialisation, or to their values after
epoch {rewind_epoch}, BN statistics reset.

""" + "\n".join(lines) + """

![test accuracy per method](retrain.png)

Files: retrain.csv (per method), runs.csv (per seed), baseline/ (the baseline and its rewind points, when
trained here).
"""
    bench.write_summary("Fine-tune, rewind or train from scratch", body)
