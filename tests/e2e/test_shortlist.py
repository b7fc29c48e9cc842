"""Multi-fidelity selection (--shortlist): the best candidates by proxy are trained briefly, and those with the
best held-out accuracy after it are fine-tuned; the test split decides nothing, and a resumed run trains no
candidate of the shortlist twice."""

from __future__ import annotations

import pandas as pd
import pytest
from run_checks import subnet_specs

from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.runners import local


@pytest.mark.slow
def test_the_shortlist_picks_by_held_out_accuracy_after_a_short_fine_tune(search_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # real images at 30% MACs, where the candidates score apart both by proxy and after a short fine-tune
    args = search_args + ["--budget", "30%flops", "--strategy", "random", "--trials", "6", "--pruner", "none", "--shortlist", "4",
                          "--shortlist-steps", "8", "--finetune-epochs", "0.1", "--out", str(run)]
    jobs = []
    finetune_candidate = local.finetune_candidate
    monkeypatch.setattr(local, "finetune_candidate",
                        lambda *a, **k: jobs.append((k["epochs"], k["test"])) or finetune_candidate(*a, **k))
    assert main(args + ["--finetune-top", "1"]) == 0
    trials = pd.read_csv(run / "trials.csv")
    shortlist = pd.read_csv(run / "shortlist.csv")
    assert shortlist["proxy_acc"].nunique() == 4
    # the four best proxies, ranked by their held-out accuracy after 8 steps (ties: the better proxy)
    best = trials[trials["state"] == "complete"].sort_values(["proxy_acc", "number"], ascending=[False, True])
    assert sorted(shortlist["number"]) == sorted(best["number"].head(4))
    assert list(shortlist["number"]) != list(best["number"].head(4))
    assert list(shortlist["rank"]) == [1, 2, 3, 4]
    keys = list(zip(-shortlist["shortlist_holdout_acc"], -shortlist["proxy_acc"], shortlist["number"], strict=True))
    assert keys == sorted(keys)
    assert list(shortlist["finetuned"]) == [True, False, False, False]
    (spec,) = subnet_specs(run)
    assert spec["trial"] == shortlist["number"].iloc[0]
    # 8 steps of 64 images of the training split (conftest's 1600 images less 200 held out: 22 steps an epoch),
    # without a test accuracy; then the one full fine-tune
    assert jobs == [(pytest.approx(8 / 22), False)] * 4 + [(None, True)]

    # resumed with one more subnet to fine-tune: the shortlist is read back, not trained again
    jobs.clear()
    assert main(["search", "--out", str(run), "--resume", "--finetune-top", "2"]) == 0
    assert jobs == [(None, True)]
    assert sorted(s["trial"] for s in subnet_specs(run)) == sorted(shortlist["number"].head(2))


def test_a_shortlist_must_exceed_the_subnets_it_picks(tiny_search_args, tmp_path, capsys):
    assert main(tiny_search_args + ["--shortlist", "2", "--finetune-top", "3", "--out", str(tmp_path / "r")]) == 2
    assert "--shortlist 2 must exceed --finetune-top 3" in capsys.readouterr().err
    assert main(tiny_search_args + ["--shortlist", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--shortlist must not be negative" in capsys.readouterr().err


def test_the_shortlist_is_twice_the_fine_tunes_unless_given():
    assert SearchConfig().shortlist_size == 2 * SearchConfig().finetune_top == 6
    assert SearchConfig(finetune_top=1).shortlist_size == 2 and SearchConfig(finetune_top=0).shortlist_size == 0
    assert SearchConfig(finetune_top=0, shortlist=6).shortlist_size == 0  # nothing to choose for
    assert SearchConfig(shortlist=0).shortlist_size == 0 and SearchConfig(shortlist=5).shortlist_size == 5
