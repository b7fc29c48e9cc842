"""Searches on a real Ray cluster: a head started on loopback for these tests and stopped after.

The head listens on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set for the head and
for every driver before Ray is imported). Every test that starts Ray belongs here: `make test` gives a
module to one xdist worker, so they never run at once, and the head's teardown (``ray stop --force``)
stops every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")  # as Ray's default; said explicitly so head and drivers agree
# the cluster's token, shared by head, workers and drivers through the environment: `ray start` finds no token on
# a fresh machine (~/.ray/auth_token is written by the first `ray.init` that starts a Ray, not by `ray start`)
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from custom_models import MARKS, Picky, odd_first, slow
from quick import QUICK_FLAGS, QUICK_OPTIONS
from test_failures import EVERY_CANDIDATE_FAILED, failing_args

from autoprune.cli import main
from autoprune.models import create_model
from autoprune.pipeline import search
from autoprune.pruning.space import PruningSpace
from autoprune.runners.ray_tune import Shipped, WorkerBench, _worker_state

RAY = Path(sys.executable).with_name("ray")
CUSTOM_MODELS = Path(__file__).with_name("custom_models.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    """Where the head's workers leave a mark as they score a pruned ``slow`` model (custom_models)."""
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def head(marks):
    """A Ray head with 2 CPUs on loopback; its address."""
    port = _free_port()
    env = {**os.environ, MARKS: str(marks)}  # its workers inherit the head's environment
    started = subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    if started.returncode != 0:
        pytest.fail(f"ray start --head exited {started.returncode}:\n{started.stderr[-3000:]}", pytrace=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def slow_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("slow") / "slow.pt"
    torch.save(slow(1, 4).state_dict(), path)
    return str(path)


def _slow_args(tiny_npz, weights, out, trials):
    return ["search", "--model", f"{CUSTOM_MODELS}:slow", "--weights", weights, "--data", tiny_npz,
            "--budget", "60%flops", "--strategy", "random", "--trials", str(trials), "--finetune-top", "0",
            "--holdout", "120", "--batch-size", "64", "--calib-batches", "2", "--score-images", "120",
            "--out", str(out), "--quiet", *QUICK_FLAGS]


@pytest.mark.slow
def test_search_on_the_cluster_writes_what_a_local_run_writes(head, tiny_search_args, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    # a data-driven criterion: the workers must prune by the rankings the driver computed on its batches; the
    # run's pruner stops scores on the cluster as here, so one trial at a time, for the pruner to see the trials
    # in the same order on both runners; a tight budget, so that the candidates of the tiny data score apart
    common = tiny_search_args + ["--strategy", "random", "--trials", "6", "--finetune-top", "1", "--finetune-epochs", "0.1",
                                 "--criterion", "apoz", "--budget", "25%flops", "--pruner", "halving"]
    assert main(common + ["--out", str(local)]) == 0
    assert main(common + ["--out", str(remote), "--ray-address", head, "--workers", "1"]) == 0
    for run in (local, remote):
        assert {"trials.csv", "pareto.csv", "pareto.json", "report.md", "study.db"} <= {p.name for p in run.iterdir()}
    ours = pd.read_csv(local / "trials.csv").sort_values("number").reset_index(drop=True)
    theirs = pd.read_csv(remote / "trials.csv").sort_values("number").reset_index(drop=True)
    assert list(ours.columns) == list(theirs.columns)
    assert theirs["predicted_latency_ms"].between(0, float("inf")).all()  # each candidate's latency, predicted
    # the same strategy and seed ask for the same candidates, wherever they are scored
    ratios = [c for c in ours.columns if c.startswith("ratio:")]
    pd.testing.assert_frame_equal(ours[ratios], theirs[ratios])
    # and the pruner stops the same ones: a stopped trial saw some of the 120 scoring images (the worker may run
    # ahead of the driver's decision), the others all of them, and score as they do here
    assert (ours["state"] == "stopped").sum() >= 1 and (ours["state"] == "complete").sum() >= 1
    assert list(theirs["state"]) == list(ours["state"])
    stopped = theirs["state"] == "stopped"
    assert theirs.loc[stopped, "scored_images"].between(1, 120).all()
    assert (theirs.loc[~stopped, "scored_images"] == 120).all()
    pd.testing.assert_series_equal(ours.loc[~stopped, "proxy_acc"], theirs.loc[~stopped, "proxy_acc"])
    # the shortlist (on by default: twice the one fine-tune, where two candidates were scored in full) chose
    # among the same candidates on the cluster
    shortlisted = [sorted(pd.read_csv(run / "shortlist.csv")["number"]) if (run / "shortlist.csv").exists() else []
                   for run in (local, remote)]
    assert shortlisted[0] == shortlisted[1]
    distinct = ((ours["state"] == "complete") & ours["same_as"].isna()).sum()
    assert len(shortlisted[0]) == (2 if distinct >= 2 else 0)
    status = pd.read_json(remote / "run.json", typ="series")
    assert status["backend"] == "ray" and status["workers"] == 1


def test_a_worker_rebuilds_the_drivers_space_from_its_rankings_once_per_run(monkeypatch):
    torch.manual_seed(0)
    model, x = create_model("resnet20", in_channels=1, num_classes=10).eval(), torch.randn(1, 1, 28, 28)
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))]
    driver = PruningSpace(model, x, criterion="taylor", batches=batches)
    bench = WorkerBench(driver.model, driver.example_input, driver.config, driver.orders, evaluator=None, threads=1, key="a")
    reads = []

    def read(ref):  # the object store's part, as a pickle: what a worker reads is what the driver put
        reads.append(ref)
        return pickle.loads(ref)

    monkeypatch.setattr("ray.get", read)
    threads = torch.get_num_threads()
    try:
        shipped = Shipped("a", pickle.dumps(bench))
        _, worker, _ = _worker_state(shipped)  # no batches reach the worker
        assert _worker_state(shipped)[1] is worker and len(reads) == 1  # later trials read nothing
        assert _worker_state(Shipped("b", pickle.dumps(bench)))[1] is not worker and len(reads) == 2  # a new run
    finally:
        torch.set_num_threads(threads)  # build() sets a worker's threads
    assert worker.orders == driver.orders
    ratios = driver.uniform_ratios(0.4)
    assert worker.kept_indices(ratios) == driver.kept_indices(ratios)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried(head, marks, tiny_npz, slow_weights, tmp_path):
    killed: list[int] = []
    finished = threading.Event()
    for mark in marks.iterdir():  # left by the workers of earlier tests
        mark.unlink()

    def kill_one_worker() -> None:
        # the first worker seen scoring a candidate (custom_models.SlowWhenPruned marks it): mid-trial,
        # whatever this machine's speed, since scoring one takes several of its 0.4 s forward passes
        while not finished.is_set() and not killed:
            scoring = [int(mark.name) for mark in marks.iterdir() if int(mark.name) != os.getpid()]
            if scoring:
                os.kill(scoring[0], signal.SIGKILL)
                killed.append(scoring[0])
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    out = tmp_path / "run"
    try:
        assert main(_slow_args(tiny_npz, slow_weights, out, 4) + ["--ray-address", head, "--workers", "2"]) == 0
    finally:
        finished.set()
    watcher.join(timeout=5)
    assert killed, "no trial worker was found to kill"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["state"] == "complete").all()


@pytest.mark.slow
def test_a_killed_driver_resumes_without_repeating_trials(head, tiny_npz, slow_weights, tmp_path):
    out = tmp_path / "run"
    args = _slow_args(tiny_npz, slow_weights, out, 4) + ["--ray-address", head, "--workers", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "autoprune.cli", *args], env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        path = out / "trials.csv"
        if path.exists() and len(pd.read_csv(path)) >= 2:
            break
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    before = pd.read_csv(out / "trials.csv")
    assert 2 <= len(before) < 4
    assert main(args + ["--resume"]) == 0
    after = pd.read_csv(out / "trials.csv")
    complete = after[after["state"] == "complete"]
    assert len(complete) == 4
    # the trials completed before the kill are kept as they were, not scored again
    columns = [c for c in after.columns if c.startswith("ratio:")] + ["proxy_acc", "seconds"]
    kept = after.set_index("number").loc[before["number"], columns]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), before[columns].reset_index(drop=True))
    # what was lost is at most the one trial in flight, closed as failed (no error) and asked anew
    lost = after[after["state"] == "fail"]
    assert len(lost) <= 1 and lost["error"].isna().all()
    assert len(after) == 4 + len(lost)


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(head, tiny_npz, tmp_path):
    torch.manual_seed(0)
    result = search(Picky(odd_first), tiny_npz, budget="60%flops", strategy="random", trials=8, finetune_top=0,
                    holdout=120, batch_size=64, calib_batches=2, score_images=120, out=str(tmp_path / "run"),
                    quiet=True, ray_address=head, workers=2, trial_resources="cpu=1", **QUICK_OPTIONS)
    trials = pd.read_csv(result.run_dir / "trials.csv")
    assert len(trials) == 8
    failed = trials[trials["state"] == "fail"]
    assert len(failed) >= 1 and failed["error"].str.contains("ValueError: this model cannot run").all()
    # 1 CPU a trial: two fit in the module's Ray of 2 CPUs at once. (They do run side by side, the second starting
    # while the first runs; but whether Tune reuses the first worker instead of waiting for a second one to start
    # depends on this machine's speed, so that is not asserted.)
    assert all(t["resources"] == [{"CPU": 1.0}] for t in _tune_trials(result.run_dir))


@pytest.mark.slow
def test_a_private_local_ray_runs_the_search_as_users_type_it(head, tiny_search_args, tmp_path):
    """``autoprune search ... --ray-local 2`` with its progress bar on (no --quiet), beside a running cluster."""
    out = tmp_path / "run"
    args = [a for a in tiny_search_args if a != "--quiet"] + [
        "--strategy", "random", "--trials", "3", "--finetune-top", "1", "--finetune-epochs", "0.1", "--out", str(out),
        "--ray-local", "2", "--workers", "2"]
    # its own process: this one is already connected to the test cluster
    done = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    status = pd.read_json(out / "run.json", typ="series")
    assert status["backend"] == "ray" and status["status"] == "complete"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and (trials["state"] == "complete").all()
    # the search's bar advanced once a trial, as the trials finished on the workers
    assert re.search(r"^search\b.* 3/3 .*best proxy \d+\.\d+%", done.stderr, re.MULTILINE), done.stderr[-2000:]
    assert re.search(r"^shortlist on Ray\b.* 2/2 ", done.stderr, re.MULTILINE), done.stderr[-2000:]
    assert re.search(r"^fine-tune on Ray\b.* 1/1 ", done.stderr, re.MULTILINE), done.stderr[-2000:]
    subnet = pd.read_csv(out / "pareto.csv")["id"].iloc[0]
    assert (out / "subnets" / subnet / "spec.json").is_file() and f"{subnet} " in done.stderr  # and its table


def test_every_candidate_failing_on_the_cluster_fails_the_search_with_the_first_error(
        head, tiny_npz, picky_weights, tmp_path, capsys):
    args = failing_args(tiny_npz, picky_weights, tmp_path / "run", 2) + ["--ray-address", head, "--workers", "2"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == EVERY_CANDIDATE_FAILED
    states = pd.read_csv(tmp_path / "run" / "trials.csv").sort_values("number")["state"]
    assert list(states) == ["fail"] * 2


def test_ray_local_refuses_a_process_already_connected_to_a_cluster(head, tiny_search_args, tmp_path, capsys):
    import ray

    if not ray.is_initialized():
        ray.init(address=head, log_to_driver=False)
    args = tiny_search_args + ["--trials", "2", "--finetune-top", "0", "--out", str(tmp_path / "run"), "--ray-local", "2"]
    assert main(args) == 2
    assert "already connected to a Ray cluster" in capsys.readouterr().err


def test_a_driver_without_the_cluster_token_is_refused_in_one_line(head, tiny_search_args, tmp_path):
    """The head takes tokens (RAY_AUTH_TOKEN above); a user who types the command without one, and has no
    ~/.ray/auth_token, gets autoprune's error, not Ray's traceback, and gets it before the set-up loads the
    model: the weights here are not a state dict, which the set-up would refuse first."""
    home = tmp_path / "home"
    home.mkdir()
    unreadable = tmp_path / "weights.pt"
    unreadable.write_bytes(b"not a state dict")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")} | {"HOME": str(home)}
    args = tiny_search_args + ["--trials", "2", "--finetune-top", "0", "--out", str(tmp_path / "run"),
                               "--ray-address", head, "--weights", str(unreadable)]
    done = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"autoprune: error: --ray-address {head}: Ray could not join the cluster there"), last
    assert "RAY_AUTH_TOKEN" in last and "Traceback" not in done.stderr


def _tune_trials(run: Path) -> list[dict]:
    """What Ray Tune recorded of each trial: when it started (the driver's clock), how long its function ran
    (the worker's), which worker process ran it and the resources it reserved."""
    state_file = max((run / "ray" / "tune").glob("experiment_state-*.json"))  # the latest: names end in the time
    trials = []
    for trial_json, runtime_json in json.loads(state_file.read_text())["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        bundles = pickle.loads(bytes.fromhex(trial["placement_group_factory"])).bundles
        result = runtime["last_result"]
        trials.append({"start": runtime["start_time"], "seconds": result["time_total_s"], "pid": result["pid"],
                       "resources": bundles})
    return sorted(trials, key=lambda t: t["start"])


@pytest.mark.slow
def test_trial_resources_decide_how_many_trials_run_at_once_on_ray(head, tmp_path, tiny_search_args):
    """The module's Ray of 2 CPUs and 2 workers: trials of 2 CPUs run one after another (of 1 CPU, two fit at once:
    test_a_trial_that_raises_is_recorded_and_the_search_goes_on)."""
    def ray_search(name: str, resources: str) -> list[dict]:
        out = tmp_path / name
        args = tiny_search_args + ["--strategy", "random", "--trials", "2", "--finetune-top", "0", "--out", str(out),
                              "--ray-address", head, "--workers", "2", "--trial-resources", resources]
        # its own driver process, as a user's: Tune's records of the run are read from its directory
        done = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True,
                              timeout=400, check=False, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert (pd.read_csv(out / "trials.csv")["state"] == "complete").all()
        assert yaml.safe_load((out / "config.yaml").read_text())["trial_resources"] == resources
        return _tune_trials(out)

    serial = ray_search("cpu2", "cpu=2")
    assert len(serial) == 2 and all(t["resources"] == [{"CPU": 2.0}] for t in serial)
    # a trial starts once the one before it has finished: its start is after the other's start plus its run
    first, second = serial
    assert second["start"] >= first["start"] + first["seconds"]
    assert len({t["pid"] for t in serial}) == 1  # one worker at a time: the same process, reused

