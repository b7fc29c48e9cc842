"""report.html of runs that are not finished: hand-written run directories for the edge cases (the
complete run, from a real search, is in tests/e2e/test_report_browser.py)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from autoprune.errors import UserError
from autoprune.html_report import write_html_report

_IMG = re.compile(r'<img class="plot" id="([\w-]+)" alt="([^"]+)" '
                  r'src="data:image/png;base64,([^"]+)">')


def plot_images(page: str) -> dict[str, tuple[str, Image.Image]]:
    """The page's plots by id: alt text and the decoded PNG (a broken one raises here)."""
    images = {}
    for ident, alt, data in _IMG.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "PNG" and image.width > 0 and image.height > 0, ident
        images[ident] = (alt, image)
    assert len(images) == page.count("<img"), "an <img> that is not an inline PNG plot"
    return images


def _run_dir(path: Path, trials: list[dict] | None, *, budget: str = "50%flops") -> Path:
    """A run as `autoprune search` leaves it while it searches: config.yaml, run.json, trials."""
    path.mkdir()
    config = {"model": "resnet20", "data": "fashion-mnist", "budget": budget, "strategy": "tpe",
              "criterion": "l1", "granularity": "filter", "trials": 40, "finetune_top": 3,
              "finetune_epochs": 0.5, "latency_batch": 1, "device": "cpu",
              "groups": [{"name": "conv1", "channels": 16, "low": 0.0, "high": 0.5,
                          "members": ["conv1"]}]}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    status = {"status": "running", "started": "2026-11-25T17:30:13"}
    (path / "run.json").write_text(json.dumps(status))
    if trials is not None:
        pd.DataFrame(trials).to_csv(path / "trials.csv", index=False)
    return path


def test_running_run_renders_what_it_has(tmp_path):
    nan = float("nan")  # no trial has a measured latency: an older run, or none measured yet
    trials = [{"number": n, "state": state, "macs": macs, "params": 1e5, "proxy_acc": proxy,
               "latency_ms": nan}
              for n, (state, macs, proxy) in enumerate([
                  ("complete", 14e6, 0.61), ("infeasible", 17e6, nan), ("fail", 12e6, nan),
                  ("complete", 13e6, 0.66)])]
    run = _run_dir(tmp_path / "run", trials, budget="60MMACs,8ms")
    before = sorted(p.name for p in run.iterdir())

    path = write_html_report(run)

    assert path == run / "report.html"
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "report.html"])  # no temp left
    page = path.read_text()
    assert '<span class="status running">running</span>' in page
    assert "4 of 40 (2 complete, 1 fail, 1 infeasible)" in page
    assert "No pareto.json yet" in page and "No fine-tuned subnet yet." in page
    images = plot_images(page)
    assert set(images) == {"pareto-macs", "progress"}
    # an absolute budget needs no baseline, so its line is drawn; no latency, so no latency plot
    assert "budget 60MMACs" in images["pareto-macs"][0]
    assert "No accuracy-vs-latency plot yet" in page
    assert "No fine-tuned subnet, so no widths to draw" in page
    assert 'id="subnets"' not in page  # no baseline and no subnet: no table
    assert "--subnet ID --format onnx" in page


def test_fresh_run_renders_without_trials(tmp_path):
    page = write_html_report(_run_dir(tmp_path / "run", None)).read_text()
    assert "No trial has finished yet" in page and "0 of 40" in page
    assert plot_images(page) == {}
    assert "Search progress" not in page


def test_a_directory_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no autoprune run"):
        write_html_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
