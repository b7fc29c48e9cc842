"""How fast does each strategy find a good candidate, and what does one candidate cost?

Every strategy runs the real search (the same pipeline as ``autoprune search``, fine-tuning off)
for the same number of trials over several seeds. The sensitivity that ``tpe-bounded`` (tpe with
``--bounds-from-sensitivity``) and ``binary`` need is measured once and reused by every seed
(``--sensitivity-from``); its one-off cost is reported on its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from autoprune.bench.common import BenchDir, figure
from autoprune.budget import parse_budget
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.pipeline import search, sensitivity
from autoprune.search import list_strategies
from autoprune.workbench import load_workbench, make_evaluator

BOUNDED = "tpe-bounded"
_PARTS = ("ask", "cost", "prune", "recalibrate", "evaluate", "bookkeeping")


def check(*, budget: str, strategies: list[str], trials: int, seeds: int, **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed
    budget, unknown or no strategies, or fewer than 1 trial or seed."""
    parse_budget(budget)
    unknown = [s for s in strategies if s not in (*list_strategies(), BOUNDED)]
    if unknown or not strategies:
        raise UserError(f"--strategies: unknown {unknown or 'none given'} (choose from "
                        f"{', '.join([*list_strategies(), BOUNDED])})")
    if trials < 1 or seeds < 1:
        raise UserError("--trials and --seeds must be at least 1")


def run(config: SearchConfig, bench: BenchDir, *, budget: str, strategies: list[str], trials: int, seeds: int,
        overhead_candidates: int, quiet: bool = False) -> pd.DataFrame:
    """Search ``seeds`` times with each of ``strategies`` for ``trials`` trials at ``budget``; returns the table of
    throughput.csv.

    Per strategy, over every seed: trials, scored and infeasible trials, the searches' seconds, scored
    candidates per minute, and the seconds per scored candidate with their split (ask, cost, prune,
    recalibrate, evaluate, bookkeeping). Also writes trials.csv, curves.csv (the best proxy accuracy so far
    per trial), efficiency.png and summary.md, with the scoring overhead timed on ``overhead_candidates``
    candidates (none where 0).
    """
    runs = bench.path / "runs"
    base = {k: v for k, v in asdict(config).items() if k not in ("model", "data", "budget", "out")}
    base.update(finetune_top=0, trials=trials)
    sensitivity_dir = None
    if any(s in (BOUNDED, "binary") for s in strategies):
        sensitivity_dir = runs / "sensitivity"
        if bench.done("sensitivity") is None:
            tic = time.perf_counter()
            bench.log("measuring per-group sensitivity once for every seed")
            sensitivity(config.model, config.data, budget=budget, out=str(sensitivity_dir),
                        resume=(sensitivity_dir / "config.yaml").exists(), quiet=quiet, **{**base, "strategy": "binary"})
            bench.record("sensitivity", {"seconds": round(time.perf_counter() - tic, 1)})
    frames = []
    for offset in range(seeds):
        for label in strategies:
            seed = config.seed + offset
            key, run_dir = f"{label} seed {seed}", runs / f"{label}-s{seed}"
            if bench.done(key) is None:
                bench.log(f"{key}: {trials} trials")
                options = {**base, "seed": seed, "strategy": "tpe" if label == BOUNDED else label,
                           "bounds_from_sensitivity": label == BOUNDED,
                           "sensitivity_from": str(sensitivity_dir) if label in (BOUNDED, "binary") else None}
                search(config.model, config.data, budget=budget, out=str(run_dir),
                       resume=(run_dir / "config.yaml").exists(), quiet=quiet, **options)
                timings = json.loads((run_dir / "run.json").read_text())["timings"]
                bench.record(key, {"search_seconds": round(timings["search"], 2)})
            frame = pd.read_csv(run_dir / "trials.csv").sort_values("number")
            frame["strategy"], frame["seed"] = label, seed
            frame["search_seconds"] = bench.done(key)["search_seconds"]
            frames.append(frame)
    trials_all = pd.concat(frames, ignore_index=True)
    trials_all["best_so_far"] = trials_all.groupby(["strategy", "seed"])["proxy_acc"].transform(
        lambda s: s.fillna(0.0).cummax())
    bench.write_csv("trials.csv", trials_all.drop(columns=[c for c in trials_all if c.startswith("ratio:")]))
    curves = _curves(trials_all, strategies)
    bench.write_csv("curves.csv", curves)
    cost_seconds, overhead = _offline(config, bench, trials_all, strategies, overhead_candidates)
    speed = _throughput(trials_all, strategies, cost_seconds)
    bench.write_csv("throughput.csv", speed)
    _plot(bench, curves, speed, strategies)
    _summary(bench, config, budget, trials, seeds, curves, speed, overhead, bench.done("sensitivity"))
    return speed


def _curves(frame: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    stats = frame.groupby(["strategy", "number"])["best_so_far"].agg(["mean", "min", "max", "count"]).reset_index()
    stats["trial"] = stats["number"] + 1
    stats["strategy"] = pd.Categorical(stats["strategy"], strategies, ordered=True)
    return stats.sort_values(["strategy", "trial"]).drop(columns="number")


def _throughput(frame: pd.DataFrame, strategies: list[str], cost_seconds: float) -> pd.DataFrame:
    """Per strategy (summed over seeds): seconds per scored candidate and how they split.
    Every trial pays one cost count (``cost_seconds``, timed apart from the searches)."""
    rows = []
    for label in strategies:
        runs = frame[frame["strategy"] == label]
        scored = runs[runs["proxy_acc"].notna()]
        n = max(len(scored), 1)
        total = runs.groupby("seed")["search_seconds"].first().sum()
        parts = {
            "cost": cost_seconds * len(runs) / n,
            "prune": scored["prune_seconds"].sum() / n,
            "recalibrate": scored["recalibrate_seconds"].sum() / n,
            "evaluate": scored["evaluate_seconds"].sum() / n,
        }
        parts["ask"] = runs["seconds"].sum() / n - sum(parts.values())
        parts["bookkeeping"] = total / n - runs["seconds"].sum() / n
        rows.append({"strategy": label, "trials": len(runs), "scored": len(scored),
                     "infeasible": int((runs["state"] == "infeasible").sum()),
                     "search_seconds": round(total, 1), "scored_per_minute": 60 * len(scored) / total,
                     "seconds_per_scored": total / n, **{f"{p}_seconds": parts[p] for p in _PARTS}})
    return pd.DataFrame(rows)


def _offline(config: SearchConfig, bench: BenchDir, frame: pd.DataFrame, strategies: list[str],
             k: int) -> tuple[float, dict | None]:
    """What the searches do not time themselves, measured on their candidates afterwards: the
    seconds of one exact cost count, and the scoring overhead (seconds per scored candidate over
    the seconds of the bare forward passes it needs; ``k`` candidates, none when ``k`` is 0)."""
    label = "random" if "random" in strategies else strategies[0]
    runs = frame[(frame["strategy"] == label) & (frame["seed"] == config.seed)]
    scored = runs[runs["proxy_acc"].notna()]
    counted, overhead = bench.done("cost count"), bench.done("overhead")
    if counted is not None and (overhead is not None or k < 1 or scored.empty):
        return counted["seconds"], overhead
    data, _, space = load_workbench(config)
    full = pd.read_csv(bench.path / "runs" / f"{label}-s{config.seed}" / "trials.csv").set_index("number")

    def ratios(number: int) -> dict[str, float]:
        return {g: float(full.loc[number, f"ratio:{g}"]) for g in space.group_names}

    if counted is None:
        candidates = [ratios(n) for n in runs["number"]]
        tic = time.perf_counter()
        for _ in range(20):
            for r in candidates:
                space.cost(r)
        counted = bench.record("cost count", {"seconds": (time.perf_counter() - tic) / (20 * len(candidates))})
    if overhead is None and k >= 1 and not scored.empty:
        overhead = bench.record("overhead", _overhead(config, bench, data, space, runs, scored, ratios, k, label))
    return counted["seconds"], overhead


def _overhead(config, bench, data, space, runs, scored, ratios, k, label) -> dict:
    """Scoring overhead, side by side: for each of ``k`` of the search's candidates, its pruning and
    scoring (the hot path, as the search runs it) and the bare forward passes of the same images,
    timed one after the other in alternating order, so that the drift of a shared machine cancels.
    The search's own per-candidate ask and bookkeeping are added to the hot path."""
    picked = scored.iloc[np.linspace(0, len(scored) - 1, num=min(k, len(scored))).round().astype(int)]
    bench.log(f"timing scoring against the bare forward passes on {len(picked)} {label} candidates")
    evaluator = make_evaluator(config, data)

    def scoring(r: dict[str, float]) -> float:
        tic = time.perf_counter()
        evaluator.score(space.prune(r)[0])
        return time.perf_counter() - tic

    hot, forward = [], []
    for i, number in enumerate(picked["number"]):
        r = ratios(number)
        if i % 2:
            forward.append(evaluator.forward_seconds(space.prune(r)[0]))
            hot.append(scoring(r))
        else:
            hot.append(scoring(r))
            forward.append(evaluator.forward_seconds(space.prune(r)[0]))
    timed = scored["prune_seconds"] + scored["recalibrate_seconds"] + scored["evaluate_seconds"]
    ask = float((scored["seconds"] - timed).mean())
    bookkeeping = float((runs["search_seconds"].iloc[0] - runs["seconds"].sum()) / len(runs))
    candidate = float(np.mean(hot)) + ask + bookkeeping
    return {"strategy": label, "candidates": len(picked), "scoring_seconds": round(float(np.mean(hot)), 4),
            "ask_and_bookkeeping_seconds": round(ask + bookkeeping, 4), "candidate_seconds": round(candidate, 4),
            "forward_seconds": round(float(np.mean(forward)), 4), "images": evaluator.images_per_score,
            "overhead": round(candidate / float(np.mean(forward)), 3)}


def _plot(bench: BenchDir, curves: pd.DataFrame, speed: pd.DataFrame, strategies: list[str]) -> None:
    fig, axes = figure(2, width=6.0)
    ax = axes[0][0]
    for label in strategies:
        c = curves[curves["strategy"] == label]
        ax.plot(c["trial"], 100 * c["mean"], label=label)
        ax.fill_between(c["trial"], 100 * c["min"], 100 * c["max"], alpha=0.15)
    ax.set_xlabel("trials")
    ax.set_ylabel("best proxy accuracy so far (%; mean, range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    top = curves["max"].max()
    ax.set_ylim(max(0.0, 100 * top - 25), 100 * top + 2)
    ax = axes[0][1]
    bottom = np.zeros(len(speed))
    for part in _PARTS:
        values = speed[f"{part}_seconds"].to_numpy()
        ax.bar(speed["strategy"], values, bottom=bottom, label=part)
        bottom += values
    ax.set_ylabel("seconds per scored candidate")
    ax.legend(fontsize=8)
    bench.save_figure(fig, "efficiency.png")


def _summary(bench, config, budget, trials, seeds, curves, speed, overhead, sens) -> None:
    checkpoints = sorted({max(1, trials // 4), max(1, trials // 2), trials})
    lines = ["| strategy | " + " | ".join(f"best proxy after {n} trials" for n in checkpoints) + " |",
             "|---|" + "---:|" * len(checkpoints)]
    for label, c in curves.groupby("strategy", observed=True, sort=False):
        cells = []
        for n in checkpoints:
            row = c[c["trial"] == n].iloc[0]
            cells.append(f"{row['mean']:.1%} ({row['min']:.1%}-{row['max']:.1%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    split = ["| strategy | scored / trials | infeasible | scored per minute | s per scored | "
             + " | ".join(_PARTS) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(_PARTS)]
    for r in speed.itertuples():
        split.append(f"| {r.strategy} | {r.scored} / {r.trials} | {r.infeasible} | {r.scored_per_minute:.1f} | "
                     f"{r.seconds_per_scored:.2f} | " + " | ".join(f"{getattr(r, f'{p}_seconds'):.4f}" for p in _PARTS) + " |")
    body = f"""
{', '.join(speed['strategy'])} on {config.model} / {config.data} at {budget}: {trials} trials each, {seeds} seed(s)
(from {config.seed}), adaptive BN with {config.calib_batches} batches of {config.batch_size} and {config.score_images}
scoring images. Infeasible trials count as trials with no score.

""" + "\n".join(lines) + """

Time per scored candidate (all seeds; infeasible trials' time is spread over the scored ones).
`ask` is the strategy choosing ratios (random: its draws and bisections), `cost` the exact MAC/param count (timed on the candidates after the searches, so that the
searches pay no extra storage write for it),
`bookkeeping` the Optuna tell and storage writes:

""" + "\n".join(split) + "\n"
    if sens:
        body += f"\nThe sensitivity for {BOUNDED} was measured once in {sens['seconds']:.0f} s and reused by every seed.\n"
    if overhead:
        body += (f"\nScoring overhead, over {overhead['candidates']} of the {overhead['strategy']} candidates: pruning and "
                 f"scoring each took {overhead['scoring_seconds']:.2f} s, and with the search's "
                 f"{overhead['ask_and_bookkeeping_seconds']:.2f} s of ask and bookkeeping a candidate costs "
                 f"{overhead['candidate_seconds']:.2f} s, against {overhead['forward_seconds']:.2f} s for the bare "
                 f"forward passes of its {overhead['images']} images (eval mode), timed beside it in alternating order: "
                 f"**overhead {overhead['overhead']:.2f}** (target: under 1.25).\n")
    body += "\n![best proxy vs trials, and time per candidate](efficiency.png)\n\nFiles: curves.csv, throughput.csv, trials.csv (all runs), runs/ (each search's own run directory).\n"
    bench.write_summary("Search efficiency", body)
