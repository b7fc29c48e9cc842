"""report.html of a real search: its content, and a real headless Chromium that opens it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from quick import QUICK_FLAGS
from test_html_report import plot_images

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.html_report import check_in_browser, require_browser, write_html_report

PLOTS = {"pareto-macs", "pareto-latency", "widths", "progress", "sensitivity"}


@pytest.fixture(scope="module")
def run(tiny_npz, tiny_weights, tmp_path_factory) -> Path:
    """One small binary-strategy search (it writes sensitivity.csv) with two fine-tuned subnets,
    shared by the tests here; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("html") / "run"
    assert main(["search", "--model", "resnet20", "--data", tiny_npz, "--weights", tiny_weights,
                 "--budget", "50%flops", "--strategy", "binary", "--trials", "6",
                 "--finetune-top", "2", "--holdout", "120", "--batch-size", "64",
                 "--calib-batches", "2", "--score-images", "120", "--finetune-epochs", "0.3",
                 *QUICK_FLAGS, "--quiet", "--out", str(out)]) == 0
    assert (out / "report.html").is_file()  # every search writes it
    return out


def _copy(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to / "run", ignore=shutil.ignore_patterns("*.pt", "study.db")))


def test_report_shows_the_run(run):
    page = (run / "report.html").read_text()
    pareto = json.loads((run / "pareto.json").read_text())
    specs = [json.loads(p.read_text()) for p in run.glob("subnets/*/spec.json")]
    assert specs and pareto["front"]

    images = plot_images(page)
    assert set(images) == PLOTS
    assert all(alt for alt, _ in images.values())
    table = page[page.index('<table id="subnets">'):page.index("</table>")]
    assert f"<td>{pareto['baseline']['test_acc']:.2%}</td>" in table
    for spec in specs:
        pareto_cell = "yes" if spec["id"] in {s["id"] for s in pareto["front"]} else "no"
        assert f"<tr><td>{spec['id']}</td><td>{spec['macs'] / 1e6:.2f}</td>" in table
        assert f"<td>{spec['test_acc']:.2%}</td>" in table and f"<td>{pareto_cell}</td>" in table
    best = max(pareto["front"], key=lambda s: s["test_acc"])["id"]
    assert f"autoprune export {run} --subnet {best} --format onnx" in page
    assert f'autoprune.load_subnet("{run / "subnets" / best}")' in page
    assert "(&lt;= " in page and "50.0% of baseline)" in page  # the budget against the base cost
    assert "status complete" in page and "fine-tune" in page


def test_sensitivity_section_only_with_its_csv(run, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / "sensitivity.csv").unlink()
    page = write_html_report(copy).read_text()
    assert set(plot_images(page)) == PLOTS - {"sensitivity"}
    assert "Per-group sensitivity" not in page


def test_weight_granularity_has_no_width_chart(run, tmp_path):
    copy = _copy(run, tmp_path)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**config, "granularity": "weight"}))
    page = write_html_report(copy).read_text()
    assert "widths" not in plot_images(page)
    assert "every layer keeps its width, so there is no width chart" in page


@pytest.fixture
def browser():
    """Chromium, which .ci/run installs: missing, these tests skip on a developer's machine and fail in CI."""
    try:
        require_browser()
    except UserError as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {missing}")
        pytest.skip(str(missing))


def test_report_opens_cleanly_in_chromium(run, tmp_path, browser):
    shot = tmp_path / "report.png"
    check = check_in_browser(run / "report.html", shot)
    assert check.console_errors == [] and check.page_errors == [] and check.failed_requests == []
    assert {i["id"] for i in check.images} == PLOTS
    for image in check.images:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
        assert image["alt"]
    assert check.problems() == []
    with Image.open(shot) as png:
        assert png.format == "PNG" and png.width == 1280 and png.height > 2000  # the full page


def test_browser_check_sees_a_broken_page(tmp_path, browser):
    page = tmp_path / "broken.html"
    page.write_text('<img id="gone" alt="missing plot" src="missing.png">'
                    '<script>console.error("logged"); throw new Error("boom")</script>')
    check = check_in_browser(page)
    assert "logged" in check.console_errors
    assert any("boom" in e for e in check.page_errors)
    assert any(r.endswith("missing.png: net::ERR_FILE_NOT_FOUND") for r in check.failed_requests)
    assert [(i["id"], i["naturalWidth"]) for i in check.images] == [("gone", 0)]
    assert "image 'gone' did not render" in check.problems()


def test_report_command_rebuilds_and_screenshots(run, tmp_path, browser, capsys):
    copy = _copy(run, tmp_path)
    (copy / "report.html").unlink()
    shot = tmp_path / "shot.png"
    assert main(["report", str(copy), "--screenshot", str(shot)]) == 0
    assert "5 images rendered, 0 problems" in " ".join(capsys.readouterr().err.split())  # wrapped at 120 columns
    assert (copy / "report.html").is_file() and shot.stat().st_size > 0
    assert main(["report", str(tmp_path / "nowhere")]) == 2
