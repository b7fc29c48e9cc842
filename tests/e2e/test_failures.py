"""A candidate that breaks the user's model is recorded as a failed trial; the search goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from custom_models import Picky, odd_first, pruned
from quick import QUICK_FLAGS, QUICK_OPTIONS

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.pipeline import search
from autoprune.runners.trial import describe_error, error_line

CUSTOM_MODELS = Path(__file__).with_name("custom_models.py")


def _search(tiny_npz, tmp_path, refuse, trials):
    torch.manual_seed(0)
    return search(Picky(refuse), tiny_npz, budget="60%flops", strategy="random", trials=trials, finetune_top=0,
                  holdout=120, batch_size=64, calib_batches=2, score_images=120, out=str(tmp_path / "run"),
                  quiet=True, **QUICK_OPTIONS)


def test_failing_candidates_are_recorded_and_the_search_completes(tiny_npz, tmp_path):
    result = _search(tiny_npz, tmp_path, odd_first, trials=8)
    trials = pd.read_csv(result.run_dir / "trials.csv")
    assert len(trials) == 8
    failed = trials[trials["state"] == "fail"]
    assert len(failed) >= 1 and (trials["state"] == "complete").sum() >= 1
    assert failed["error"].str.contains("ValueError: this model cannot run with").all()
    assert failed["proxy_acc"].isna().all()
    assert trials.loc[trials["state"] == "complete", "error"].isna().all()


def test_a_model_that_fails_every_candidate_stops_with_its_error(tiny_npz, tmp_path):
    with pytest.raises(UserError) as caught:
        _search(tiny_npz, tmp_path, pruned, trials=10)
    assert str(caught.value) == ("the first 3 candidates within the budget all failed, so the search stopped; "
                                 "the first, trial 0: ValueError: this model cannot run with (8, 9) channels")


def test_the_latency_set_up_measures_only_the_widths_a_model_runs_at(tiny_npz, tmp_path):
    # timed at a batch of 4, every pruned copy of this model refuses to run: the set-up measures the unpruned one
    # alone (no rounding, the predictor's scale through it, nothing to check), and the candidates fail as before
    with pytest.raises(UserError, match="the first 3 candidates within the budget all failed"):
        search(Picky(pruned), tiny_npz, budget="60%flops", strategy="random", trials=4, finetune_top=0, holdout=120,
               batch_size=64, calib_batches=2, score_images=120, out=str(tmp_path / "run"), quiet=True,
               target="torch", latency_batch=4, latency_checks=2)


def failing_args(tiny_npz, weights, out, trials: int) -> list[str]:
    """A search, as users type it (progress on), of a model that runs at its full widths only: every candidate,
    each within the budget, fails."""
    return ["search", "--model", f"{CUSTOM_MODELS}:only_unpruned", "--weights", weights, "--data", tiny_npz,
            "--budget", "30%flops", "--trials", str(trials), "--finetune-top", "1", "--holdout", "120",
            "--batch-size", "64", "--calib-batches", "2", "--score-images", "120", "--out", str(out),
            *QUICK_FLAGS]


# two trials, both within the budget and failed: fewer than the three that stop a search early, and not "no
# candidate was scored in full within the budget"
EVERY_CANDIDATE_FAILED = ("autoprune: error: every candidate within the budget failed (2 failed, 0 over the budget); "
                          "the first, trial 0: ValueError: this model cannot run with (4, 9) channels")


def test_when_every_candidate_within_the_budget_fails_the_search_fails_with_the_first_error(
        tiny_npz, picky_weights, tmp_path, capsys):
    assert main(failing_args(tiny_npz, picky_weights, tmp_path / "run", 2)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == EVERY_CANDIDATE_FAILED
    assert "no candidate was scored in full" not in err
    states = pd.read_csv(tmp_path / "run" / "trials.csv")["state"]
    assert list(states) == ["fail"] * 2
    # the run is kept for its trials, and says it failed and why
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and status["error"] == EVERY_CANDIDATE_FAILED.removeprefix("autoprune: error: ")


def test_a_failed_trial_records_its_exception_in_one_line():
    def deep(n):
        if n == 0:
            raise ValueError("this model cannot run:\nits widths are (3, 11)")
        deep(n - 1)

    try:
        deep(5)
    except ValueError as exc:
        error = describe_error(exc)
    assert error.startswith("Traceback (most recent call last):\n") and len(error.splitlines()) < 10  # the last frames
    assert error_line(error) == "ValueError: this model cannot run: its widths are (3, 11)"
