"""How fast does each strategy find a good candidate, and what does one candidate cost?

Every strategy runs the real search (the same pipeline as ``autoprune search``, fine-tuning off)
for the same number of trials over several seeds. A label is a strategy, optionally with the pruner
that stops its scores early and the calibration batches of its scores (``tpe+median``, ``random+none``,
``tpe+none@20``; a bare strategy takes the study's ``--pruner`` and ``--calib-batches``). Proxies of
different calibrations are not on one scale: the candidate each run would pick at equal search times is
scored again by one reference scorer (``REFERENCE_CALIB`` batches, every scoring image), so that runs
compare whatever their own scorer. The sensitivity that ``tpe-bounded`` (tpe with ``--bounds-from-sensitivity``) and
``binary`` need is measured once and reused by every seed (``--sensitivity-from``); its one-off cost is
reported on its own. Only complete candidates count toward the best proxy: a stopped one was scored on
fewer images.
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
from autoprune.search.pruners import list_pruners
from autoprune.workbench import load_workbench, make_evaluator

BOUNDED = "tpe-bounded"
_PARTS = ("ask", "cost", "prune", "recalibrate", "evaluate", "bookkeeping")
_TIME_FRACTIONS = (0.25, 0.5, 1.0)  # of the first label's median search time: where the best proxy is compared
REFERENCE_CALIB = 20  # calibration batches of the reference score, which compares runs of any calibration


def parse_label(label: str, default_pruner: str, default_calib: int = 1) -> tuple[str, str, int]:
    """``(strategy label, pruner, calibration batches)`` of a label ``strategy[+pruner][@batches]``; what a label
    leaves out is ``default_pruner`` and ``default_calib``. A malformed count raises ``UserError``."""
    rest, _, calib = label.partition("@")
    strategy, _, pruner = rest.partition("+")
    if calib and (not calib.isdigit() or int(calib) < 1):
        raise UserError(f"--strategies: '{label}': the calibration batches after @ must be a positive integer")
    return strategy, pruner or default_pruner, int(calib) if calib else default_calib


def check(*, budget: str, strategies: list[str], trials: int, seeds: int, **_) -> None:
    """Check the study's own options before anything is written; raises ``UserError`` for a malformed
    budget, unknown or no strategies, or fewer than 1 trial or seed."""
    parse_budget(budget)
    labels = [parse_label(s, "none") for s in strategies]
    unknown = [s for s, (name, pruner, _) in zip(strategies, labels, strict=True)
               if name not in (*list_strategies(), BOUNDED) or pruner not in list_pruners()]
    if unknown or not strategies:
        raise UserError(f"--strategies: unknown {unknown or 'none given'} (choose from "
                        f"{', '.join([*list_strategies(), BOUNDED])}, each optionally +{'/+'.join(list_pruners())} "
                        "and @<calibration batches>)")
    if len(set(strategies)) < len(strategies):
        raise UserError("--strategies: a label is given twice")
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
    if any(parse_label(s, config.pruner)[0] in (BOUNDED, "binary") for s in strategies):
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
            name, pruner, calib = parse_label(label, config.pruner, config.calib_batches)
            key, run_dir = f"{label} seed {seed}", runs / f"{label}-s{seed}"
            if bench.done(key) is None:
                bench.log(f"{key}: {trials} trials")
                options = {**base, "seed": seed, "strategy": "tpe" if name == BOUNDED else name, "pruner": pruner,
                           "calib_batches": calib,
                           "bounds_from_sensitivity": name == BOUNDED,
                           "sensitivity_from": str(sensitivity_dir) if name in (BOUNDED, "binary") else None}
                search(config.model, config.data, budget=budget, out=str(run_dir),
                       resume=(run_dir / "config.yaml").exists(), quiet=quiet, **options)
                timings = json.loads((run_dir / "run.json").read_text())["timings"]
                bench.record(key, {"search_seconds": round(timings["search"], 2)})
            frame = pd.read_csv(run_dir / "trials.csv").sort_values("number")
            frame["strategy"], frame["seed"] = label, seed
            frame["search_seconds"] = bench.done(key)["search_seconds"]
            frames.append(frame)
    trials_all = pd.concat(frames, ignore_index=True)
    complete = trials_all["proxy_acc"].where(trials_all["state"] == "complete")  # a stopped score saw fewer images
    by_run = complete.groupby([trials_all["strategy"], trials_all["seed"]])
    trials_all["best_so_far"] = by_run.transform(lambda s: s.fillna(0.0).cummax())
    trials_all["elapsed_seconds"] = trials_all.groupby(["strategy", "seed"])["seconds"].cumsum()
    bench.write_csv("trials.csv", trials_all.drop(columns=[c for c in trials_all if c.startswith("ratio:")]))
    curves = _curves(trials_all, strategies)
    bench.write_csv("curves.csv", curves)
    timed = _at_times(trials_all, strategies)
    bench.write_csv("curves_by_time.csv", timed)
    reached = _trials_to_reach(trials_all, strategies, strategies[0])
    rescored = _rescored(config, bench, trials_all, strategies)
    bench.write_csv("rescored.csv", rescored)
    cost_seconds, overhead = _offline(config, bench, trials_all, strategies, overhead_candidates)
    speed = _throughput(trials_all, strategies, cost_seconds)
    bench.write_csv("throughput.csv", speed)
    _plot(bench, curves, timed, speed, strategies)
    _summary(bench, config, budget, trials, seeds, curves, timed, reached, rescored, speed, overhead,
             bench.done("sensitivity"))
    return speed


def _curves(frame: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    stats = frame.groupby(["strategy", "number"])["best_so_far"].agg(["mean", "min", "max", "count"]).reset_index()
    stats["trial"] = stats["number"] + 1
    stats["strategy"] = pd.Categorical(stats["strategy"], strategies, ordered=True)
    return stats.sort_values(["strategy", "trial"]).drop(columns="number")


def _at_times(frame: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """The best proxy so far of each label at the same wall times, over its seeds (mean, min, max): at
    ``_TIME_FRACTIONS`` of the first label's median search time (the sum of its trials' seconds), and on a grid of
    50 times up to the longest search for the plot. A search that ended earlier keeps its last best."""
    totals = frame.groupby(["strategy", "seed"])["elapsed_seconds"].max()
    reference = float(totals.loc[strategies[0]].median())
    grid = sorted({*np.linspace(0, float(totals.max()), 50)[1:], *(f * reference for f in _TIME_FRACTIONS)})
    rows = []
    for label in strategies:
        runs = frame[frame["strategy"] == label]
        for t in grid:
            bests = [float(run.loc[run["elapsed_seconds"] <= t, "best_so_far"].max()) if (run["elapsed_seconds"] <= t).any()
                     else 0.0 for _, run in runs.groupby("seed")]
            rows.append({"strategy": label, "seconds": round(t, 3), "fraction_of_reference": round(t / reference, 4),
                         "mean": float(np.mean(bests)), "min": min(bests), "max": max(bests)})
    return pd.DataFrame(rows)


def _rescored(config: SearchConfig, bench: BenchDir, frame: pd.DataFrame, strategies: list[str]) -> pd.DataFrame:
    """The candidate each run would pick (its best complete one so far) at ``_TIME_FRACTIONS`` of the first label's
    median search time, scored again by the reference scorer: ``REFERENCE_CALIB`` calibration batches and every
    scoring image, built under the run's own widths (its latency.json). Each score is recorded in the journal."""
    totals = frame.groupby(["strategy", "seed"])["elapsed_seconds"].max()
    reference = float(totals.loc[strategies[0]].median())
    data, _, space = load_workbench(config)
    scorer = make_evaluator(config, data, calib_batches=REFERENCE_CALIB)
    rows = []
    for (label, seed), run in frame.groupby(["strategy", "seed"], sort=False):
        run_dir = bench.path / "runs" / f"{label}-s{seed}"
        full = pd.read_csv(run_dir / "trials.csv").set_index("number")
        setup = run_dir / "latency.json"
        widths = json.loads(setup.read_text())["widths"] if setup.is_file() else None
        for fraction in _TIME_FRACTIONS:
            seen = run[(run["elapsed_seconds"] <= fraction * reference) & (run["state"] == "complete")]
            if seen.empty:
                continue
            pick = seen.sort_values(["proxy_acc", "number"], ascending=[False, True]).iloc[0]
            number = int(pick["number"])
            key = f"rescored {label} seed {seed} trial {number}"
            if bench.done(key) is None:
                ratios = {g: float(full.loc[number, f"ratio:{g}"]) for g in space.group_names}
                with space.widths_of(widths):
                    subnet = space.prune(ratios)[0]
                bench.record(key, {"proxy_acc": scorer.score(subnet)})
            rows.append({"strategy": label, "seed": seed, "fraction_of_reference": fraction,
                         "seconds": round(fraction * reference, 3), "number": number, "own_proxy_acc": pick["proxy_acc"],
                         "reference_proxy_acc": bench.done(key)["proxy_acc"]})
    return pd.DataFrame(rows)


def _trials_to_reach(frame: pd.DataFrame, strategies: list[str], reference: str) -> dict[str, list[int | None]]:
    """Per label, per seed: the trials it took to reach the reference label's final best proxy of the same seed
    (None where it never did)."""
    finals = frame[frame["strategy"] == reference].groupby("seed")["best_so_far"].max()
    reached: dict[str, list[int | None]] = {}
    for label in strategies:
        counts = []
        for seed, run in frame[frame["strategy"] == label].groupby("seed"):
            hit = run.sort_values("number").reset_index(drop=True)
            at = hit.index[hit["best_so_far"] >= finals.get(seed, np.inf) - 1e-12]
            counts.append(int(at[0]) + 1 if len(at) else None)
        reached[label] = counts
    return reached


def _throughput(frame: pd.DataFrame, strategies: list[str], cost_seconds: float) -> pd.DataFrame:
    """Per strategy (summed over seeds): seconds per scored candidate and how they split.
    Every trial pays one cost count (``cost_seconds``, timed apart from the searches)."""
    rows = []
    for label in strategies:
        runs = frame[frame["strategy"] == label]
        fresh = runs["same_as"].isna() if "same_as" in runs else True  # not a subnet that took an earlier score
        scored = runs[runs["proxy_acc"].notna() & fresh]
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
                     "complete": int((runs["state"] == "complete").sum()),
                     "stopped": int((runs["state"] == "stopped").sum()),
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


def _plot(bench: BenchDir, curves: pd.DataFrame, timed: pd.DataFrame, speed: pd.DataFrame,
          strategies: list[str]) -> None:
    fig, axes = figure(3, width=5.5)
    top = curves["max"].max()
    for ax, table, x, label_x in ((axes[0][0], curves, "trial", "trials"),
                                  (axes[0][1], timed, "seconds", "search seconds (sum of its trials')")):
        for label in strategies:
            c = table[table["strategy"] == label]
            ax.plot(c[x], 100 * c["mean"], label=label)
            ax.fill_between(c[x], 100 * c["min"], 100 * c["max"], alpha=0.15)
        ax.set_xlabel(label_x)
        ax.set_ylabel("best proxy accuracy so far (%; mean, range over seeds)")
        ax.grid(alpha=0.3)
        ax.set_ylim(max(0.0, 100 * top - 25), 100 * top + 2)
    axes[0][0].legend(fontsize=7)
    ax = axes[0][2]
    bottom = np.zeros(len(speed))
    for part in _PARTS:
        values = speed[f"{part}_seconds"].to_numpy()
        ax.bar(speed["strategy"], values, bottom=bottom, label=part)
        bottom += values
    ax.set_ylabel("seconds per scored candidate")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=8)
    bench.save_figure(fig, "efficiency.png")


def _cell(row) -> str:
    return f"{row['mean']:.1%} ({row['min']:.1%}-{row['max']:.1%})"


def _summary(bench, config, budget, trials, seeds, curves, timed, reached, rescored, speed, overhead, sens) -> None:
    checkpoints = sorted({max(1, trials // 4), max(1, trials // 2), trials})
    reference = speed["strategy"].iloc[0]
    lines = ["| strategy | " + " | ".join(f"best proxy after {n} trials" for n in checkpoints)
             + f" | trials to reach {reference}'s best, per seed |",
             "|---|" + "---:|" * (len(checkpoints) + 1)]
    for label, c in curves.groupby("strategy", observed=True, sort=False):
        cells = [_cell(c[c["trial"] == n].iloc[0]) for n in checkpoints]
        hits = ", ".join("never" if n is None else str(n) for n in reached[label])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {hits} |")
    marks = timed[timed["fraction_of_reference"].isin(_TIME_FRACTIONS)]
    seconds = sorted(marks["seconds"].unique())
    by_time = ["| strategy | " + " | ".join(f"best proxy at {t:.0f} s" for t in seconds) + " |",
               "|---|" + "---:|" * len(seconds)]
    for label, c in marks.groupby("strategy", sort=False):
        by_time.append(f"| {label} | " + " | ".join(_cell(c[c["seconds"] == t].iloc[0]) for t in seconds) + " |")
    again = ["| strategy | " + " | ".join(f"at {t:.0f} s" for t in seconds) + " |", "|---|" + "---:|" * len(seconds)]
    for label, c in rescored.groupby("strategy", sort=False):
        cells = []
        for t in seconds:
            v = c.loc[c["seconds"] == t, "reference_proxy_acc"]
            cells.append(f"{v.mean():.1%} ({v.min():.1%}-{v.max():.1%}, {len(v)} seeds)" if len(v) else "none yet")
        again.append(f"| {label} | " + " | ".join(cells) + " |")
    split = ["| strategy | scored / trials | stopped | infeasible | scored per minute | s per scored | "
             + " | ".join(_PARTS) + " |", "|---|---:|---:|---:|---:|---:|" + "---:|" * len(_PARTS)]
    for r in speed.itertuples():
        split.append(f"| {r.strategy} | {r.scored} / {r.trials} | {r.stopped} | {r.infeasible} | "
                     f"{r.scored_per_minute:.1f} | {r.seconds_per_scored:.2f} | "
                     + " | ".join(f"{getattr(r, f'{p}_seconds'):.4f}" for p in _PARTS) + " |")
    body = f"""
{', '.join(speed['strategy'])} on {config.model} / {config.data} at {budget}: {trials} trials each, {seeds} seed(s)
(from {config.seed}), adaptive BN with {config.calib_batches} batch(es) of {config.batch_size} (a label's `@N`: N batches)
and {config.score_images} scoring images; a label `strategy+pruner` stops scores early with that pruner (a bare
strategy: `--pruner {config.pruner}`). Only complete candidates count toward the best proxy: a stopped one was scored on fewer
images. Infeasible and stopped trials count as trials.

""" + "\n".join(lines) + f"""

At equal search time (the sum of the trials' seconds; {', '.join(f'{f:g}' for f in _TIME_FRACTIONS)} of {reference}'s
median search time):

""" + "\n".join(by_time) + f"""

The candidate each run would pick at those times, scored again with {REFERENCE_CALIB} calibration batches on every
scoring image (proxies of different calibrations compare on this one scale):

""" + "\n".join(again) + """

Time per scored candidate (all seeds; a stopped candidate counts as scored, and infeasible trials' time is spread
over the scored ones). `ask` is the strategy choosing ratios (the samplers' and random's bisections onto the budget),
`cost` the exact MAC/param count (timed on the candidates after the searches, so that the
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
    body += ("\n![best proxy vs trials and vs search time, and time per candidate](efficiency.png)\n\n"
             "Files: curves.csv (by trial), curves_by_time.csv, rescored.csv, throughput.csv, trials.csv (all runs), "
             "runs/ (each search's own run directory).\n")
    bench.write_summary("Search efficiency", body)
