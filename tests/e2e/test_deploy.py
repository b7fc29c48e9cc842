"""Deploying a searched subnet: exports checked in their own runtimes, and the commands that read runs."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from quick import QUICK_FLAGS

import autoprune
from autoprune.cli import main
from autoprune.data import load_data


@pytest.fixture(scope="module")
def run(tiny_npz, tiny_weights, tmp_path_factory) -> Path:
    """A small search that exports every Pareto subnet as ONNX and as a torch.export program."""
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main(["search", "--model", "resnet20", "--data", tiny_npz, "--weights", tiny_weights,
                 "--budget", "50%flops", "--holdout", "120", "--batch-size", "64", "--calib-batches", "2",
                 "--score-images", "120", "--finetune-epochs", "0.3", "--trials", "5", "--finetune-top", "2",
                 "--export", "onnx,torch-export", *QUICK_FLAGS, "--out", str(out), "--quiet"]) == 0
    return out


def _test_images(tiny_npz: str, n: int) -> torch.Tensor:
    return load_data(tiny_npz, holdout=120, seed=0).test.x[:n].float()


def test_search_exports_every_pareto_subnet_and_the_exports_compute_the_subnet(run, tiny_npz):
    import onnxruntime as ort

    front = [s["id"] for s in json.loads((run / "pareto.json").read_text())["front"]]
    assert front
    x = _test_images(tiny_npz, 5)  # real images, at a batch size the exports were not traced at
    for subnet_id in front:
        directory = run / "subnets" / subnet_id
        checks = json.loads((directory / "exports.json").read_text())
        assert set(checks) == {"onnx", "torch-export"}
        for check in checks.values():
            assert check["max_abs_diff"] <= check["tolerance"] < 1e-2
            assert 0 <= check["latency_ms"] < math.inf and 0 <= check["pytorch_latency_ms"] < math.inf
            assert check["batch"] == 1
        with torch.no_grad():
            expected = autoprune.load_subnet(directory)(x)
        session = ort.InferenceSession(str(directory / "subnet.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        program = torch.export.load(directory / "subnet.pt2").module()
        with torch.no_grad():
            exported_out = program(x)
        assert torch.allclose(onnx_out, expected, atol=1e-4) and torch.equal(onnx_out.argmax(1), expected.argmax(1))
        assert torch.allclose(exported_out, expected, atol=1e-5)
    assert "export" in json.loads((run / "run.json").read_text())["timings"]
    exports = (run / "report.html").read_text().partition('<table id="exports">')[2].partition("</table>")[0]
    assert exports.count("<td>subnet.onnx</td>") == exports.count("<td>subnet.pt2</td>") == len(front)


def test_export_command_writes_a_state_dict_that_loads_into_the_pruned_architecture(run, tmp_path, capsys):
    subnet_id = json.loads((run / "pareto.json").read_text())["front"][0]["id"]
    out = tmp_path / "weights" / "subnet.pt"
    assert main(["export", str(run), "--subnet", subnet_id, "--format", "state-dict", "--out", str(out),
                 "--batch", "4"]) == 0
    assert "matches PyTorch" in capsys.readouterr().err
    state = torch.load(out, weights_only=True)
    model = autoprune.load_subnet(run / "subnets" / subnet_id)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    check = json.loads((run / "subnets" / subnet_id / "exports.json").read_text())["state-dict"]
    assert check["path"] == str(out) and check["batch"] == 4 and check["max_abs_diff"] <= check["tolerance"]


def test_export_command_errors(run, tmp_path, capsys):
    assert main(["export", str(run), "--subnet", "t9999"]) == 2
    assert "holds no subnet; this run has: t" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--subnet", "t0000"]) == 2
    assert "holds no autoprune run" in capsys.readouterr().err
    # a subnet searched from a Python model object cannot be rebuilt from its spec alone
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    spec_path = next(copy.glob("subnets/*/spec.json"))
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "model": None}))
    assert main(["export", str(copy), "--subnet", spec["id"]]) == 2
    assert "base_model=model" in capsys.readouterr().err


def test_an_export_that_differs_from_pytorch_fails_the_command(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("autoprune.export.ATOL", -1.0)  # a negative tolerance: every export differs
    subnet_id = json.loads((run / "pareto.json").read_text())["front"][0]["id"]
    assert main(["export", str(run), "--subnet", subnet_id, "--format", "state-dict", "--out",
                 str(tmp_path / "s.pt")]) == 1
    assert "DIFFERS from PyTorch" in capsys.readouterr().err


def test_runs_and_show(run, capsys):
    """Their tables go to stdout, so that they pipe and redirect."""
    assert main(["runs", str(run.parent)]) == 0
    listing = capsys.readouterr().out
    best = max(json.loads(p.read_text())["test_acc"] for p in run.glob("subnets/*/spec.json"))
    assert "run" in listing and "complete" in listing and "5/5" in listing and f"{best:.2%}" in listing
    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out
    for spec in run.glob("subnets/*/spec.json"):
        assert spec.parent.name in shown
    assert "baseline" in shown and "onnx: " in shown and "torch-export: " in shown


def test_amp_needs_a_gpu(search_args, tmp_path, capsys):
    assert main(search_args + ["--amp", "--out", str(tmp_path / "r")]) == 2
    assert "--amp" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_an_unknown_export_format_fails_before_any_work(search_args, tmp_path, capsys):
    assert main(search_args + ["--export", "onnx,tflite", "--out", str(tmp_path / "r")]) == 2
    assert "tflite" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_the_run_opens_in_optuna_dashboard(run):
    """The one documented command serves the run's study, each trial with its cost, latency and widths."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    server = subprocess.Popen([dashboard, f"sqlite:///{run / 'study.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "optuna-dashboard did not start"
                time.sleep(0.5)
        (study,) = studies
        assert {a["key"] for a in study["user_attrs"]} >= {"model", "budget", "base_macs", "base_latency_ms"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0",
                                    timeout=30) as response:
            trials = json.load(response)["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(trials) == 5
    for trial in trials:
        attrs = {a["key"] for a in trial["user_attrs"]}
        assert {"macs", "params", "widths", "feasible"} <= attrs
        assert ("macs" in attrs) == ("predicted_latency_ms" in attrs)  # every costed candidate's latency
