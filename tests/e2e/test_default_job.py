"""The default job, as ``make demo`` runs it: ``autoprune search --budget 50%flops --out DIR``.

ResNet-20 on the installed Fashion-MNIST with the shipped checkpoint, run by the installed console
script in a pseudo-terminal, so that rich draws its live progress bars as in a user's terminal.
Only the image and trial counts, the subnets fine-tuned (1), the fine-tune's length and the shortlist's steps
are shrunk.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import autoprune
from autoprune.config import SHIPPED_WEIGHTS
from autoprune.data import load_data
from autoprune.deployment import MULTIPLES
from autoprune.measure import accuracy
from autoprune.results import SubnetSpec

AUTOPRUNE = Path(sys.executable).with_name("autoprune")  # the console script pip installed
LIMIT_TRAIN, LIMIT_TEST, HOLDOUT, BATCH = 1000, 500, 300, 128  # BATCH: the default --batch-size
SHRUNK = ["--trials", "5", "--finetune-top", "1", "--finetune-epochs", "0.05", "--shortlist-steps", "4",
          "--limit-train", str(LIMIT_TRAIN), "--limit-test", str(LIMIT_TEST), "--holdout", str(HOLDOUT), "--score-images", str(HOLDOUT)]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR = "\x1b[?25l"  # what rich's live display writes first on a terminal, never into a pipe


def run_in_terminal(command: list[str], *, deadline_s: float, columns: int = 160) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a new pseudo-terminal of ``columns`` columns; its exit
    code and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE",
                                                             "TTY_INTERACTIVE", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)  # the child holds it now: reading the master ends with EIO once the child has exited
    chunks, end = [], time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            proc.kill()
            pytest.fail(f"{command[:3]} did not finish within {deadline_s:.0f} s; it wrote:\n"
                        + b"".join(chunks).decode(errors="replace")[-3000:])
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_the_default_job_as_make_demo_runs_it(tmp_path):
    out = tmp_path / "demo"
    code, raw = run_in_terminal([str(AUTOPRUNE), "search", "--budget", "50%flops", "--out", str(out), *SHRUNK],
                                deadline_s=540)  # under pytest-timeout's 600 s, to show what it wrote
    text = ANSI.sub("", raw).replace("\r", "\n")
    assert code == 0, text[-3000:]

    # drawn live, as on a terminal: the search's bar and the fine-tune's, counted to the end
    assert HIDE_CURSOR in raw
    assert re.search(r"^search\s+━+\s+5/5\b.*best proxy \d+\.\d+%", text, re.MULTILINE), text[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    steps = math.ceil(0.05 * math.ceil(LIMIT_TRAIN / BATCH))  # 0.05 epochs of batches, rounded up, as train.py
    fine_tune = re.findall(rf"^fine-tune (t\d{{4}}) \(1/1\)\s+━+\s+{steps}/{steps}\b", text, re.MULTILINE)
    assert fine_tune, text[-3000:]
    # the multi-fidelity stage, on by default: the two best by proxy trained 4 steps each, the better one
    # fine-tuned (where the pruner let two candidates finish their scores; the widths kept depend on this machine)
    trials = pd.read_csv(out / "trials.csv")
    complete = trials[(trials["state"] == "complete") & trials["same_as"].isna()].sort_values(["proxy_acc", "number"], ascending=[False, True])
    if len(complete) >= 2:
        shortlist = pd.read_csv(out / "shortlist.csv")
        assert shortlist["number"].tolist() in (complete["number"].tolist()[:2], complete["number"].tolist()[1::-1])
        assert shortlist["finetuned"].tolist() == [True, False]
        assert re.search(r"^shortlist t\d{4} \(2/2\)\s+━+\s+4/4\b", text, re.MULTILINE), text[-3000:]
        assert fine_tune[-1] == shortlist["id"][0]
    else:
        assert not (out / "shortlist.csv").exists() and fine_tune[-1] == f"t{complete['number'].iloc[0]:04d}"

    # the default model, data and checkpoint, the counts asked for
    assert config["model"] == "resnet20" and config["data"] == "fashion-mnist"
    assert config["weights"] == str(SHIPPED_WEIGHTS[("resnet20", "fashion-mnist")])
    assert config["data_summary"]["train"] == LIMIT_TRAIN and config["data_summary"]["test"] == LIMIT_TEST
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    pareto = json.loads((out / "pareto.json").read_text())
    baseline = pareto["baseline"]
    assert 0.80 < baseline["test_acc"] < 0.99  # the shipped checkpoint on real images: good, far from perfect
    (spec_path,) = out.glob("subnets/*/spec.json")
    spec = json.loads(spec_path.read_text())
    assert fine_tune[-1] == spec["id"]
    assert spec["macs"] <= 0.5 * baseline["macs"]

    # the final table: the baseline's row and the subnet's, with the figures the run recorded
    assert re.search(rf"^\W*baseline\b.*{baseline['test_acc']:.2%}", text, re.MULTILINE), text[-3000:]
    assert re.search(rf"^\W*{spec['id']}\b.*{spec['test_acc']:.2%}.*yes", text, re.MULTILINE), text[-3000:]
    assert f"report: {out / 'report.html'}" in text.replace("\n", "")

    # latency on the default target: onnxruntime at batch 1, efficient widths, the predictor checked on 4
    # held-out subnets, and the verdict on the fine-tuned subnet in its spec, the table and the report
    latency = json.loads((out / "latency.json").read_text())
    assert latency["target"]["target"] == "onnxruntime" and latency["target"]["batch"] == 1
    assert latency["baseline"]["rounds"] == 15  # --latency-rounds
    assert [int(m["id"]) for m in latency["roundings"]] == list(MULTIPLES)
    groups = {g["name"]: g for g in config["groups"]}
    # the widths kept rest on layer timings: on a busy machine the budget may be out of their reach, and then
    # every width is searched, and said so
    if latency["multiple"] is None:
        assert latency["widths"] is None and "efficient widths: none kept" in text
    for name, widths in (latency["widths"] or {}).items():
        assert latency["multiple"] in MULTIPLES
        assert widths[-1] == groups[name]["channels"] and widths == sorted(set(widths))
        assert all(w % latency["multiple"] == 0 for w in widths[:-1])
    check = latency["check"]
    assert len(check["subnets"]) == 4 and check["mape"] >= 0 and -1 <= check["spearman"] <= 1
    assert f"predictor error on 4 held-out subnets: MAPE {check['mape']:.1%}" in text
    smallest = next(m for m in latency["calibration"] if m["id"] == "smallest")
    assert f"smallest subnet of the space (every group at its smallest width): {smallest['ms']:.3f} ms" in text
    assert "latency_ms" not in trials and trials["predicted_latency_ms"].notna().all()
    subnet = SubnetSpec.load(spec_path.parent)
    assert subnet.target == latency["describe"] and subnet.target.startswith("onnxruntime")
    assert subnet.latency_spread[0] <= subnet.latency_ms <= subnet.latency_spread[1]
    assert subnet.speedup_spread[0] <= subnet.speedup <= subnet.speedup_spread[1] and subnet.predicted_latency_ms > 0
    for name, kept in subnet.kept.items():
        assert latency["widths"] is None or len(kept) in latency["widths"][name]
    report = (out / "report.md").read_text()
    assert "Latency: measured on onnxruntime" in report and "predictor error on 4 held-out subnets" in report
    assert f"{subnet.speedup:.2f}x" in report and f"{subnet.speedup:.2f}x" in text

    # the subnet reloads and scores what was recorded, on the same 500 test images
    test = load_data("fashion-mnist", holdout=HOLDOUT, seed=0, limit_train=LIMIT_TRAIN, limit_test=LIMIT_TEST).test
    assert len(test) == LIMIT_TEST
    assert accuracy(autoprune.load_subnet(spec_path.parent), test) == spec["test_acc"]
