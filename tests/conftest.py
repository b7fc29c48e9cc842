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


@pytest.fixture(autouse=True, scope="session")
def latency_cache(tmp_path_factory):
    """The suite's own cache of layer timings (``autoprune.measure.latency.default_cache``), never the user's."""
    import os

    before = os.environ.get("AUTOPRUNE_CACHE_DIR")
    os.environ["AUTOPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("latency-cache"))
    yield
    if before is None:
        del os.environ["AUTOPRUNE_CACHE_DIR"]
    else:
        os.environ["AUTOPRUNE_CACHE_DIR"] = before


@pytest.fixture
def flops_clock(monkeypatch, tmp_path_factory):
    """Every forward pass autoprune times "takes" one ms per MFLOP: latencies (measured, and predicted by
    the latency table) that do not depend on this machine's speed or load, for tests whose verdict would.
    A real clock under load once put a 70%-latency budget out of reach of the smallest subnet. The layer
    timings go to a cache of their own: the FLOPs clock's figures are no machine's."""
    monkeypatch.setattr("autoprune.measure.timing.time_forward", _flops_as_ms)
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("flops-clock-cache")))


@pytest.fixture(scope="session")
def subnet_spec():
    """``subnet_spec(**fields)``: a ``SubnetSpec`` with every field a spec has, each of its own value (so that a
    field read in place of another shows), the given ones over them."""
    from autoprune.results import SubnetSpec

    def make(**fields) -> SubnetSpec:
        values = {
            "id": "t0001", "trial": 1, "model": None, "data": "fashion-mnist", "in_channels": 1, "num_classes": 3,
            "input_shape": [1, 8, 8], "granularity": "filter", "seed": 11, "criterion": "l1", "mask_scope": None,
            "base_weights": "base.pt", "ratios": {"0": 0.5, "3": 0.5}, "channels": {"0": 8, "3": 6},
            "kept": {"0": [1, 2, 5, 7], "3": [0, 4, 5]}, "macs": 1234, "params": 567, "proxy_acc": 0.625,
            "test_acc": 0.8125, "holdout_acc": 0.75, "finetune_epochs": 0.5, "finetune_seconds": 2.25,
            "retrain": None, "latency_ms": 1.5, "predicted_latency_ms": None, "latency_spread": [1.25, 1.75],
            "speedup": 1.625, "speedup_spread": [1.5, 1.875], "target": "onnxruntime 1.20.0 (CPU), batch 4, 2 threads",
            "latency_batch": 4, "device": "cpu"}
        return SubnetSpec(**{**values, **fields})

    return make
