"""Checks that several end-to-end test modules make on a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd

from autoprune.candidate import Candidate
from autoprune.measure.evaluator import AdaptiveBNEvaluator


def subnet_specs(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("subnets/*/spec.json"))]


def study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="autoprune", storage=f"sqlite:///{run / 'study.db'}")


def trial_records(run: Path, numbers) -> dict[int, tuple]:
    """What the study keeps of each finished trial: its own proxy, seconds, cost, ratios and times."""
    trials = {t.number: t for t in study(run).trials}
    candidates = {n: Candidate.from_trial(trials[n]) for n in numbers}
    return {n: (c.proxy_acc, c.seconds, c.cost.macs, c.ratios, trials[n].datetime_start, trials[n].datetime_complete)
            for n, c in candidates.items()}


def best_by_proxy(trials: pd.DataFrame, k: int) -> list[int]:
    """The K feasible scored trials of highest proxy (lower number first among equals), identical ratios once."""
    scored = trials[(trials["state"] == "complete") & trials["proxy_acc"].notna()]
    ratio_cols = [c for c in trials.columns if c.startswith("ratio:")]
    scored = scored.drop_duplicates(subset=ratio_cols, keep="first")
    return list(scored.sort_values(["proxy_acc", "number"], ascending=[False, True])["number"][:k])


def non_dominated(points: dict[str, tuple[float, float]]) -> set[str]:
    """Brute force: ids whose (accuracy, cost) no other point beats in one and matches or beats in the other."""
    return {i for i, (acc, cost) in points.items()
            if not any((a >= acc and c <= cost) and (a > acc or c < cost) for a, c in points.values())}


class ScoreCount:
    """Counts the candidates the scorer scores in this process."""

    def __init__(self, monkeypatch):
        self.calls = 0
        score = AdaptiveBNEvaluator.score

        def counted(evaluator, *args, **kwargs):
            self.calls += 1
            return score(evaluator, *args, **kwargs)

        monkeypatch.setattr(AdaptiveBNEvaluator, "score", counted)
