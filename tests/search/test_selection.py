"""Which candidates are fine-tuned (autoprune/selection.py), of studies written by hand."""

from __future__ import annotations

import optuna

from autoprune.candidate import candidates
from autoprune.selection import choose_for_finetune

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
G = optuna.distributions.FloatDistribution(0.0, 1.0)


def _study(points, *, state=COMPLETE):
    """One trial per (proxy, macs[, ratio, feasible]); by default each its own ratio."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    _add(study, points, state=state)
    return study


def _add(study, points, *, state=COMPLETE):
    for proxy, macs, *rest in points:
        ratio = rest[0] if rest else len(study.trials) / 100
        feasible = rest[1] if len(rest) > 1 else True
        attrs = {"feasible": feasible, "macs": macs, **({"proxy_acc": proxy} if proxy is not None else {})}
        study.add_trial(optuna.trial.create_trial(
            params={"g": ratio}, distributions={"g": G}, user_attrs=attrs, state=state,
            values=[proxy or 0.0, macs] if state == COMPLETE else None))


def macs(c):
    return c.cost.macs


def choose(study, k, *, spread):
    return choose_for_finetune(candidates(study, ["g"]), k, macs, spread=spread)


def chosen(study, k, *, spread):
    return [(c.proxy_acc, macs(c)) for c in choose(study, k, spread=spread)]


# a front of five, cheapest first, and one candidate dominated by the best (cheaper and better)
FRONT = [(0.5, 10), (0.6, 20), (0.7, 30), (0.8, 40), (0.9, 50)]
DOMINATED = (0.85, 60)


def test_the_best_proxies_ties_by_trial_number():
    study = _study([(0.7, 10), (0.9, 30), (0.7, 5), (0.8, 20)])
    assert chosen(study, 3, spread=False) == [(0.9, 30), (0.8, 20), (0.7, 10)]
    assert chosen(study, 10, spread=False) == [(0.9, 30), (0.8, 20), (0.7, 10), (0.7, 5)]
    assert chosen(study, 0, spread=False) == []


def test_only_complete_feasible_scored_candidates_count():
    study = _study([(0.6, 10)])
    _add(study, [(0.99, 5, 0.5, False)])  # over the budget (scored anyway)
    _add(study, [(None, 5, 0.6)])  # within the budget, not scored
    _add(study, [(0.98, 5, 0.7)], state=FAIL)  # scored, then killed before the study was told
    assert chosen(study, 5, spread=False) == [(0.6, 10)]
    assert chosen(study, 5, spread=True) == [(0.6, 10)]


def test_identical_ratios_count_once_the_first_kept():
    study = _study([(0.6, 10, 0.25), (0.7, 10, 0.25), (0.5, 10, 0.5)])
    picked = choose(study, 3, spread=False)
    assert [(c.number, c.proxy_acc) for c in picked] == [(0, 0.6), (2, 0.5)]


def test_ratios_that_snap_to_the_same_widths_count_once():
    # three ratios, two of which keep the same widths (a group's efficient widths snap them together)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for ratio, widths, proxy in ((0.25, {"g": 16}, 0.6), (0.3, {"g": 16}, 0.7), (0.5, {"g": 8}, 0.5)):
        study.add_trial(optuna.trial.create_trial(
            params={"g": ratio}, distributions={"g": G}, state=COMPLETE, values=[proxy, 10],
            user_attrs={"feasible": True, "macs": 10, "widths": widths, "proxy_acc": proxy}))
    picked = choose(study, 3, spread=False)
    assert [(c.number, c.proxy_acc) for c in picked] == [(0, 0.6), (2, 0.5)]


def test_spread_of_one_or_two():
    study = _study([*FRONT, DOMINATED])
    assert chosen(study, 1, spread=True) == [(0.9, 50)]
    assert chosen(study, 2, spread=True) == [(0.9, 50), (0.5, 10)]  # the best and the cheapest on the front


def test_spread_takes_the_ends_and_evenly_spaced_points_of_the_front():
    study = _study([*FRONT, DOMINATED])
    # best, then front[0] (front[4] is the best), then the next best proxies
    assert chosen(study, 3, spread=True) == [(0.9, 50), (0.5, 10), (0.85, 60)]
    # best, then front[0], front[2] (front[4] again the best), then the next best
    assert chosen(study, 4, spread=True) == [(0.9, 50), (0.5, 10), (0.7, 30), (0.85, 60)]
    # more than the front holds: all of it, then the rest by proxy
    assert chosen(study, 7, spread=True) == [(0.9, 50), (0.5, 10), (0.6, 20), (0.7, 30), (0.8, 40), (0.85, 60)]
