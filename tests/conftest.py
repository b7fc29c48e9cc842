import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: each takes its share of the cores, not all of them (threads
    # that outnumber cores wait on each other in torch's intra-op pool)
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def _flops_as_ms(fn, device, **_) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e6


@pytest.fixture
def flops_clock(monkeypatch):
    """Every forward pass autoprune times "takes" one ms per MFLOP: latencies (measured, and predicted by
    the latency table) that do not depend on this machine's speed or load, for tests whose verdict would.
    A real clock under load once put a 70%-latency budget out of reach of the smallest subnet."""
    monkeypatch.setattr("autoprune.measure.latency.time_forward", _flops_as_ms)
