"""A candidate that breaks the user's model is recorded as a failed trial; the search goes on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from custom_models import Picky, odd_first, pruned

from autoprune.errors import UserError
from autoprune.pipeline import search


def _search(tiny_npz, tmp_path, refuse, trials):
    torch.manual_seed(0)
    return search(Picky(refuse), tiny_npz, budget="60%flops", strategy="random", trials=trials, finetune_top=0,
                  holdout=120, batch_size=64, calib_batches=2, score_images=120, out=str(tmp_path / "run"),
                  quiet=True)


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
    with pytest.raises(UserError, match="first 3 trials all failed(.|\n)*ValueError: this model cannot run"):
        _search(tiny_npz, tmp_path, pruned, trials=10)
