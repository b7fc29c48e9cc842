"""onnxruntime sessions timed in a process of their own, all sharing one thread pool.

Each ``InferenceSession`` made with its own threads keeps a pool whose workers spin for a while after every
run. Models timed in turn in one process then slow each other: on a 2-core machine a ResNet-20 measured
0.50 ms alone and 0.76 ms among three other sessions, and the same subnet's paired speedup came out 2.5x in one
measurement and 1.9x in the next. Sessions that share one global pool, as one deployed model has its pool to
itself, measured 1.44x and 1.36x. onnxruntime sets its global pool once per process, and then refuses sessions
with threads of their own, so the sessions live in a child process (``SessionProcess``), started on first use
as ``python -m autoprune.measure.sessions`` (never a re-import of the user's main script): the user's process
keeps onnxruntime as it was.

Messages go over a socket pair as pickles, ``(op, args, dropped)`` to the child, where ``dropped`` lists
sessions no longer referenced, and ``(status, value)`` back.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection

import numpy as np

from autoprune.measure.timing import time_forward, time_interleaved


class SessionProcess:
    """A child process holding onnxruntime CPU sessions that share a global pool of ``threads`` intra-op
    threads. ``load`` makes a session and returns its ``RemoteCall``; ``time`` and ``time_forward`` run the timing
    functions of ``autoprune.measure.timing`` there, on its sessions. Raises ``RuntimeError`` with the child's
    error where a request fails, or where the child has ended."""

    def __init__(self, threads: int) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "autoprune.measure.sessions", str(theirs.fileno()), str(threads)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()
        self._count = 0
        self._dropped: list[int] = []

    def _ask(self, op: str, *args):
        with self._lock:
            dropped, self._dropped = self._dropped, []
            try:
                self._conn.send((op, args, dropped))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"the onnxruntime timing process ended (exit code {self._process.poll()})") \
                    from exc
        if status != "ok":
            raise RuntimeError(value)
        return value

    def load(self, model_bytes: bytes, feed: Mapping[str, np.ndarray]) -> RemoteCall:
        """A session of the serialised ONNX model, run on ``feed``; raises ``RuntimeError`` where onnxruntime
        refuses the model."""
        with self._lock:
            self._count += 1
            key = self._count
        self._ask("load", key, model_bytes, dict(feed))
        return RemoteCall(self, key)

    def run(self, key: int) -> list[np.ndarray]:
        """One forward pass of session ``key``: its outputs."""
        return self._ask("run", key)

    def time(self, calls: Mapping[str, RemoteCall], rounds: int) -> dict[str, list[float]]:
        """``time_interleaved`` of the sessions, in the child."""
        return self._ask("time", {name: call.key for name, call in calls.items()}, rounds)

    def time_forward(self, call: RemoteCall, warmup: int, repeats: int) -> float:
        """``time_forward`` of one session, in the child."""
        return self._ask("forward", call.key, warmup, repeats)

    def __len__(self) -> int:
        """The sessions the child holds (those dropped before this request forgotten)."""
        return self._ask("count")

    def drop(self, key: int) -> None:
        """Forget session ``key`` at the next request (no message now: a finaliser may run mid-request)."""
        self._dropped.append(key)

    @property
    def alive(self) -> bool:
        """Whether the child is running."""
        return self._process.poll() is None

    def close(self) -> None:
        """End the child: it returns once the connection closes."""
        self._conn.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class RemoteCall:
    """A session in a ``SessionProcess``: calling it runs one forward pass there and returns the outputs."""

    def __init__(self, process: SessionProcess, key: int) -> None:
        self.process = process
        self.key = key
        weakref.finalize(self, process.drop, key)

    def __call__(self) -> list[np.ndarray]:
        return self.process.run(self.key)


_PROCESSES: dict[int, SessionProcess] = {}


def session_process(threads: int) -> SessionProcess:
    """This process's ``SessionProcess`` of ``threads`` threads, started on first use and ended at exit."""
    if threads not in _PROCESSES or not _PROCESSES[threads].alive:
        _PROCESSES[threads] = SessionProcess(threads)
    return _PROCESSES[threads]


@atexit.register
def _close_all() -> None:
    for process in _PROCESSES.values():
        process.close()


def _serve(conn: Connection, threads: int) -> None:
    """The child: answer ``(op, args, dropped)`` requests until the parent closes the pipe."""
    import onnxruntime as ort

    ort.set_global_thread_pool_sizes(threads, 1)
    sessions: dict[int, tuple[object, dict]] = {}

    def call(key: int):
        session, feed = sessions[key]
        return lambda: session.run(None, feed)

    while True:
        try:
            op, args, dropped = conn.recv()
        except (EOFError, OSError):
            return
        for key in dropped:
            sessions.pop(key, None)
        try:
            if op == "load":
                key, model_bytes, feed = args
                options = ort.SessionOptions()
                options.use_per_session_threads = False  # the global pool
                options.log_severity_level = 3
                sessions[key] = (ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]), feed)
                reply = None
            elif op == "run":
                reply = call(args[0])()
            elif op == "time":
                named, rounds = args
                reply = time_interleaved({name: call(key) for name, key in named.items()}, "cpu", rounds=rounds)
            elif op == "forward":
                key, warmup, repeats = args
                reply = time_forward(call(key), "cpu", warmup=warmup, repeats=repeats)
            elif op == "count":
                reply = len(sessions)
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001  (every failure goes back to the parent, which raises it)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", reply))


if __name__ == "__main__":  # the child: python -m autoprune.measure.sessions FD THREADS
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
