"""Early-stopped scoring: the study's pruner stops a candidate's score once it is plainly worse, and a stopped
candidate is recorded, counted and left out as it should be. The scorer is a stand-in whose candidates score
a known accuracy on each batch, so which pruner stops what is exact; the study and its pruners are Optuna's."""

from __future__ import annotations

import optuna
import pytest

from autoprune.budget import parse_budget
from autoprune.candidate import candidates
from autoprune.pruning.space import Cost
from autoprune.results import RunDir
from autoprune.runners.trial import begin_trial, finish_trial, finished_count, score_candidate
from autoprune.search.pruners import list_pruners, make_pruner, stop_rule
from autoprune.selection import choose_for_finetune

BATCHES, BATCH = 8, 250
# the accuracy of each candidate on every batch; the first five are the pruners' start-up
QUALITY = [0.80, 0.70, 0.85, 0.75, 0.90, 0.30, 0.20, 0.88, 0.10, 0.95]
WORST = {5, 6, 8}  # plainly worse than every trial before them


class Batches:
    """A scorer whose candidate ``i`` (its ratio ``q``) scores ``q`` +- 0.01 on its batches, in a fixed order."""

    device = "cpu"

    def score(self, subnet, stop=None):
        q = subnet["q"]
        correct = seen = 0
        self.last_stopped = False
        for step in range(BATCHES):
            accuracy = q + (0.01 if step % 2 else -0.01)
            correct, seen = correct + accuracy * BATCH, seen + BATCH
            if stop is not None and step < BATCHES - 1 and stop(step, seen, accuracy, correct / seen):
                self.last_stopped = True
                break
        self.last_images, self.last_seconds = seen, {"recalibrate": 0.0, "evaluate": 0.0}
        return correct / seen


class Space:
    base_cost = Cost(100, 10)

    def kept_channels(self, ratios):
        return {"q": round(100 * ratios["q"])}  # a width per candidate, so that none is another's duplicate

    def cost_of_widths(self, widths):
        return Cost(50, 5)

    def prune(self, ratios):
        return dict(ratios), {}


class Fixed:
    """Asks for the next candidate of ``QUALITY``."""

    def ask(self, study):
        trial = study.ask()
        return trial, {"q": QUALITY[trial.number]}

    def objectives(self, proxy, cost):
        return [proxy]


def _search(pruner: str, tmp_path, directions=("maximize",)):
    study = optuna.create_study(directions=list(directions), pruner=make_pruner(pruner))
    tmp_path.mkdir(exist_ok=True)
    run, space, scorer, strategy = RunDir(tmp_path), Space(), Batches(), Fixed()
    if len(directions) > 1:
        strategy.objectives = lambda proxy, cost: [proxy, cost.macs]
    for _ in QUALITY:
        pending = begin_trial(study, strategy, space, parse_budget("60%flops"))
        scored = score_candidate(space, scorer, pending.candidate.ratios, stop_rule(pending.trial, pruner))
        finish_trial(study, strategy, run, ["q"], pending, scored)
    return study


@pytest.mark.parametrize("pruner", ["median", "halving", "wilcoxon"])
def test_each_pruner_stops_the_plainly_worse_candidates_and_never_the_best(pruner, tmp_path):
    study = _search(pruner, tmp_path)
    found = candidates(study, ["q"])
    stopped = {c.number for c in found if c.state == "stopped"}
    assert WORST <= stopped and 9 not in stopped and 4 not in stopped
    for c in found:
        if c.state == "stopped":  # its score is the running accuracy of the batches it saw
            assert c.scored_images < BATCHES * BATCH and c.proxy_acc == pytest.approx(QUALITY[c.number], abs=0.011)
        else:
            assert c.state == "complete" and c.scored_images == BATCHES * BATCH
    # stopped trials count toward --trials, are never fine-tuned, and trials.csv says what they were
    assert finished_count(study) == len(QUALITY)
    chosen = choose_for_finetune(found, 3, lambda c: c.cost.macs, spread=False)
    complete = sorted((c for c in found if c.state == "complete"), key=lambda c: -QUALITY[c.number])
    assert [c.number for c in chosen] == [c.number for c in complete[:3]]
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert sum(",stopped," in row for row in rows) == len(stopped)


def test_the_median_pruner_waits_for_five_trials_and_stops_at_the_second_batch(tmp_path):
    found = candidates(_search("median", tmp_path), ["q"])
    assert {c.number for c in found if c.state == "stopped"} == WORST
    assert {c.scored_images for c in found if c.state == "stopped"} == {2 * BATCH}


def test_no_pruner_and_nsga2_score_every_candidate_in_full(tmp_path):
    assert list_pruners() == ["halving", "median", "none", "wilcoxon"]
    for study in (_search("none", tmp_path / "none"), _search("median", tmp_path / "nsga2", ("maximize", "minimize"))):
        assert {c.state for c in candidates(study, ["q"])} == {"complete"}
