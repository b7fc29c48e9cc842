"""A candidate that breaks the user's model is recorded as a failed trial; the search goes on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.pipeline import search


class Picky(nn.Module):
    """A small CNN whose forward refuses some widths of its convs, as custom models can."""

    def __init__(self, refuse) -> None:
        super().__init__()
        self.refuse = refuse
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = (self.features[0].out_channels, self.features[3].out_channels)
        if self.refuse(*widths):
            raise ValueError(f"this model cannot run with {widths} channels")
        return self.fc(self.features(x))


def _odd(first: int, second: int) -> bool:
    return first % 2 == 1


def _pruned(first: int, second: int) -> bool:
    return (first, second) != (8, 16)


def _search(tiny_npz, tmp_path, refuse, trials):
    torch.manual_seed(0)
    return search(Picky(refuse), tiny_npz, budget="60%flops", strategy="random", trials=trials, finetune_top=0,
                  holdout=120, batch_size=64, calib_batches=2, score_images=120, out=str(tmp_path / "run"),
                  quiet=True)


def test_failing_candidates_are_recorded_and_the_search_completes(tiny_npz, tmp_path):
    result = _search(tiny_npz, tmp_path, _odd, trials=8)
    trials = pd.read_csv(result.run_dir / "trials.csv")
    assert len(trials) == 8
    failed = trials[trials["state"] == "fail"]
    assert len(failed) >= 1 and (trials["state"] == "complete").sum() >= 1
    assert failed["error"].str.contains("ValueError: this model cannot run with").all()
    assert failed["proxy_acc"].isna().all()
    assert trials.loc[trials["state"] == "complete", "error"].isna().all()


def test_a_model_that_fails_every_candidate_stops_with_its_error(tiny_npz, tmp_path):
    with pytest.raises(UserError, match="first 3 trials all failed(.|\n)*ValueError: this model cannot run"):
        _search(tiny_npz, tmp_path, _pruned, trials=10)
