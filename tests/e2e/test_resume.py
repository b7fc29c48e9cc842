"""Resumed searches: each finished trial keeps its own record, only the missing trials are scored,
and fine-tuned subnets stay as they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from run_checks import ScoreCount, best_by_proxy, subnet_specs, trial_records

from autoprune.cli import main
from autoprune.runners import local


@pytest.mark.slow
def test_resume_after_a_killed_run(tmp_path, search_args, monkeypatch):
    run = tmp_path / "run"
    args = search_args + ["--trials", "8", "--finetune-top", "1", "--finetune-epochs", "0.1", "--out", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", *args, "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    before = None
    while time.time() < deadline and proc.poll() is None:  # until trials.csv holds three trials
        if (run / "trials.csv").exists():
            frame = pd.read_csv(run / "trials.csv")
            if len(frame) >= 3:
                before = frame
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert before is not None, "the search never wrote three trials"
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    done_before = list(before.loc[before["state"].isin(["complete", "stopped", "infeasible"]), "number"])
    records = trial_records(run, done_before)

    scores = ScoreCount(monkeypatch)
    assert main(["search", "--out", str(run), "--resume"]) == 0  # bare: the run goes on as recorded
    after = pd.read_csv(run / "trials.csv")
    finished = after[after["state"].isin(["complete", "stopped", "infeasible"])]
    assert len(finished) == 8
    assert after["number"].is_unique
    # the trials finished before the kill keep their own records (proxy, seconds, times), not run again
    assert trial_records(run, done_before) == records
    # only the missing ones are scored: one scoring (complete or stopped) per feasible trial that had not finished,
    # but for a subnet scored before, which takes that score (same_as)
    fresh = finished[~finished["number"].isin(done_before) & (finished["state"] != "infeasible")]
    assert scores.calls == fresh["same_as"].isna().sum() >= 1
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_resume_keeps_fine_tuned_subnets_and_fine_tunes_only_the_new(tmp_path, search_args, monkeypatch):
    run = tmp_path / "run"
    args = search_args + ["--strategy", "random", "--trials", "4", "--finetune-epochs", "0.1", "--out", str(run)]
    assert main(args + ["--finetune-top", "1"]) == 0
    (first,) = subnet_specs(run)

    def files(subnet_id: str) -> dict:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run / "subnets" / subnet_id).iterdir()}

    saved = files(first["id"])
    finetuned = []
    finetune_candidate = local.finetune_candidate
    monkeypatch.setattr(local, "finetune_candidate",
                        lambda *a, **k: finetuned.append(k["seed"]) or finetune_candidate(*a, **k))
    scores = ScoreCount(monkeypatch)
    assert main(args + ["--finetune-top", "2", "--resume"]) == 0
    assert scores.calls == 0 and len(finetuned) == 1  # nothing scored again; only the second subnet trained
    assert files(first["id"]) == saved
    subnets = subnet_specs(run)
    assert [s["trial"] for s in subnets] == sorted(best_by_proxy(pd.read_csv(run / "trials.csv"), 2))
    assert first in subnets


def test_a_bare_resume_keeps_the_runs_settings_and_an_option_given_overrides_where_allowed(tmp_path, tiny_search_args,
                                                                                           capsys):
    run = tmp_path / "run"
    args = tiny_search_args + ["--strategy", "random", "--trials", "3", "--finetune-top", "0", "--out", str(run)]
    assert main(args) == 0
    recorded = (run / "config.yaml").read_text()
    assert main(["search", "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(pd.read_csv(run / "trials.csv")) == 3  # not the default 40
    assert (run / "config.yaml").read_text() == recorded
    assert not list((run / "subnets").iterdir())  # --finetune-top stays 0
    capsys.readouterr()
    assert main(["search", "--out", str(run), "--resume", "--quiet", "--trials", "4"]) == 0
    assert "--resume: --trials 3 -> 4" in capsys.readouterr().err
    assert len(pd.read_csv(run / "trials.csv")) == 4
    # a setting that fixes what the run searches may not change, even to its default
    assert main(["search", "--out", str(run), "--resume", "--quiet", "--strategy", "tpe"]) == 2
    assert "--strategy 'tpe' differs from the run's 'random'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["tpe", "random", "nsga2", "binary"])
def test_every_strategy_resumes_to_more_trials(tmp_path, tiny_search_args, strategy, monkeypatch):
    run = tmp_path / strategy
    args = tiny_search_args + ["--strategy", strategy, "--finetune-top", "0", "--out", str(run)]
    assert main(args + ["--trials", "3"]) == 0
    before = pd.read_csv(run / "trials.csv")
    records = trial_records(run, range(3))
    scores = ScoreCount(monkeypatch)
    assert main(args + ["--trials", "5", "--resume"]) == 0
    after = pd.read_csv(run / "trials.csv")
    assert list(after["number"]) == list(range(5))
    assert list(after.columns) == list(before.columns)
    assert trial_records(run, range(3)) == records
    pd.testing.assert_frame_equal(after.loc[:2], before)
    # each new trial scored once, and none a repeat: a resumed sampler does not draw the first invocation's
    # candidates again (seeded as before, tpe and nsga2 repeated them, and took their scores)
    assert after.loc[3:, "same_as"].isna().all()
    assert scores.calls == (after.loc[3:, "state"] == "complete").sum()
