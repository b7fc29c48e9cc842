"""onnxruntime's timing process: sessions sharing one pool, away from the user's process."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from torch import nn

from autoprune.measure.sessions import SessionProcess
from autoprune.measure.target import OnnxRuntimeTarget, layer_graph

SHAPE = (2, 4, 6, 6)


@pytest.fixture(scope="module")
def process():
    sessions = SessionProcess(threads=1)
    yield sessions
    sessions.close()


def _conv(process: SessionProcess, out_channels: int):
    graph = layer_graph(nn.Conv2d(4, out_channels, 3, padding=1), SHAPE)
    return process.load(graph, {"x": np.ones(SHAPE, np.float32)})


def test_a_session_runs_there_and_gives_its_outputs(process):
    (y,) = _conv(process, 5)()
    assert y.shape == (2, 5, 6, 6)


def test_sessions_are_timed_there_in_interleaved_rounds(process):
    small, large = _conv(process, 2), _conv(process, 64)
    rounds = process.time({"small": small, "large": large}, rounds=3)
    assert set(rounds) == {"small", "large"} and all(len(r) == 3 and min(r) > 0 for r in rounds.values())
    assert process.time_forward(small, warmup=1, repeats=3) > 0


def test_a_failure_there_is_raised_here_and_the_process_goes_on(process):
    with pytest.raises(RuntimeError, match="InvalidProtobuf|INVALID_PROTOBUF|Protobuf"):
        process.load(b"not a model", {"x": np.ones(SHAPE, np.float32)})
    (y,) = _conv(process, 3)()
    assert y.shape[1] == 3


def test_a_closed_process_says_it_ended():
    sessions = SessionProcess(threads=1)
    call = _conv(sessions, 2)
    sessions.close()
    with pytest.raises(RuntimeError, match="timing process ended"):
        call()


def test_this_process_keeps_sessions_with_threads_of_their_own():
    # the global pool is set in the child: here a session with its own threads is still allowed
    target = OnnxRuntimeTarget(batch=1, threads=1)
    target.time({"conv": target.prepare_layer(nn.Conv2d(4, 4, 3), SHAPE[1:])})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    graph = layer_graph(nn.Conv2d(4, 4, 3), SHAPE)
    (y,) = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(SHAPE, np.float32)})
    assert y.shape == (2, 4, 4, 4)


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    script = tmp_path / "user.py"
    script.write_text("from torch import nn\nfrom autoprune.measure.target import OnnxRuntimeTarget\n"
                      "print('user script ran')\n"
                      "t = OnnxRuntimeTarget(threads=1)\n"
                      "t.time({'c': t.prepare_layer(nn.Conv2d(2, 2, 1), (2, 4, 4))})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("user script ran") == 1


def test_a_session_no_longer_referenced_is_dropped_there():
    sessions = SessionProcess(threads=1)
    kept, dropped = _conv(sessions, 2), _conv(sessions, 3)
    assert len(sessions) == 2
    del dropped
    gc.collect()
    assert len(sessions) == 1 and kept()[0].shape[1] == 2
    sessions.close()
