"""Deployment targets: what they run, and the interleaved timing every comparison uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.measure import timing as timing_module
from autoprune.measure.target import (
    OnnxRuntimeTarget,
    TorchTarget,
    layer_graph,
    make_target,
    target_names,
)
from autoprune.measure.timing import Timing, paired_speedup, time_interleaved

LAYERS = [
    (nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=False), (6, 15, 15)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 9, 9)),
    (nn.Conv2d(4, 6, (1, 3), dilation=2, padding="same"), (4, 12, 12)),
    (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1), (6, 7, 7)),
    (nn.Conv1d(3, 5, 5), (3, 20)),
    (nn.Linear(12, 7), (12,)),
    (nn.Linear(12, 7, bias=False), (4, 12)),
]


@pytest.mark.parametrize(("module", "shape"), LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_a_layer_graph_runs_the_layer_as_pytorch_shapes_it(module, shape):
    import onnxruntime as ort

    session = ort.InferenceSession(layer_graph(module, (2, *shape)), providers=["CPUExecutionProvider"])
    x = torch.randn(2, *shape)
    (out,) = session.run(None, {"x": x.numpy()})
    assert out.shape == tuple(module(x).shape)


def test_a_layer_graph_refuses_what_it_cannot_build():
    with pytest.raises(TypeError, match="no ONNX graph for a BatchNorm2d"):
        layer_graph(nn.BatchNorm2d(4), (1, 4, 8, 8))


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_runs_the_exported_model_at_its_batch(batch):
    target = OnnxRuntimeTarget(batch=batch, threads=1)
    (logits,) = target.prepare(_model(), (1, 8, 8))()
    assert np.asarray(logits).shape == (batch, 3)
    assert target.describe() == f"{target.runtime}, batch {batch}, 1 thread"
    assert target.key.endswith(f"|cpu|b{batch}|t1")


def test_torch_runs_the_model_and_keeps_the_layout_it_times_faster():
    model = _model()
    target = TorchTarget(batch=3, threads=1)
    assert target.prepare(model, (1, 8, 8))().shape == (3, 3)
    for rounds, faster in (({"channels_last": [2.0, 2.1], "contiguous": [1.0, 1.1]}, "contiguous"),
                           ({"channels_last": [1.0, 0.9], "contiguous": [2.0, 1.9]}, "channels_last")):
        target.time = lambda calls, rounds=rounds: {k: rounds[k] for k in calls}
        assert target.choose_layout(model, (1, 8, 8)) == {k: sum(v) / 2 for k, v in rounds.items()}
        assert target.layout == faster and faster in target.runtime


def test_auto_is_onnxruntime_on_the_cpu_and_onnxruntime_runs_only_there():
    assert isinstance(make_target("auto"), OnnxRuntimeTarget)
    assert isinstance(make_target("torch"), TorchTarget)
    assert target_names() == ["auto", "onnxruntime", "torch"]
    with pytest.raises(UserError, match="--target onnxruntime runs on the CPU"):
        make_target("onnxruntime", device="cuda")
    with pytest.raises(UserError, match="unknown target 'tvm'"):
        make_target("tvm")


def _scripted(monkeypatch, script: dict[str, list[float]], passes: list | None = None):
    """time_forward returns each call's next scripted value (the first of each: its first pass; for a pass
    under ROUND_MS, the second: the repeats estimate); ``passes`` collects (name, warmup, repeats) of each."""
    calls = []

    def fake(fn, device, warmup=5, repeats=30):
        name = fn()
        calls.append(name)
        if passes is not None:
            passes.append((name, warmup, repeats))
        return script[name].pop(0)

    monkeypatch.setattr(timing_module, "time_forward", fake)
    return calls


def test_interleaved_rounds_rotate_and_time_a_stray_round_again(monkeypatch):
    # per call: the estimate, then 3 rounds; b's second round strays (x2), so round 2 is timed again
    calls = _scripted(monkeypatch, {"a": [1.0, 1.0, 1.0, 1.1, 0.9, 1.05], "b": [2.0, 2.0, 2.0, 4.0, 2.2, 2.1]})
    rounds = time_interleaved({"a": lambda: "a", "b": lambda: "b"}, rounds=3)
    assert rounds == {"a": [1.0, 1.05, 0.9], "b": [2.0, 2.1, 2.2]}
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # the order rotates each round


def test_the_passes_of_a_round_scale_with_the_length_of_a_pass(monkeypatch):
    # a 1 ms pass: 20 timed passes a round after 3 settling ones; a 3 s pass: one after one. The length is
    # judged on a pass after a cold one, which can take far longer than the rest (a session's first run)
    passes = []
    _scripted(monkeypatch, {"short": [1.0, 1.0] + [1.0] * 2, "long": [3000.0] + [3000.0] * 2}, passes)
    time_interleaved({"short": lambda: "short", "long": lambda: "long"}, rounds=2)
    assert passes == [("short", 1, 1), ("short", 5, 3), ("long", 1, 1),
                      ("short", 3, 20), ("long", 1, 1), ("long", 1, 1), ("short", 3, 20)]


def test_a_speedup_pairs_the_rounds():
    speedup = paired_speedup([2.0, 4.0, 3.0], [1.0, 1.0, 2.0])
    assert speedup == Timing(2.0, 1.5, 4.0, 3)
    assert speedup.describe("x") == "2.00x (1.50-4.00)"
    with pytest.raises(ValueError):
        paired_speedup([1.0], [1.0, 2.0])
