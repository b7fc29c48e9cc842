"""The latency table: timed once per shape, cached, calibrated, and close to measurement."""

from __future__ import annotations

import pytest
import torch

from autoprune.measure.latency import LatencyTable, measure_latency
from autoprune.measure.target import TorchTarget
from autoprune.models import create_model
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 16
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def model():
    return create_model("resnet20", in_channels=1, num_classes=10).eval()


def _space_with_table(model, cache=None):
    space = PruningSpace(model, torch.randn(1, *SHAPE))
    table = LatencyTable(space.latency_layers(), TorchTarget(batch=BATCH, threads=1), cache=cache)
    measured = measure_latency(model, SHAPE, batch=BATCH, repeats=10)
    space.attach_latency(table, measured)
    return space, table, measured


def test_calibrated_on_the_measured_baseline(model):
    space, _, measured = _space_with_table(model)
    assert space.base_cost.latency_ms == pytest.approx(measured, rel=1e-6)


def test_each_shape_is_timed_once_and_cached(model, tmp_path):
    cache = tmp_path / "latency_table.json"
    space, table, _ = _space_with_table(model, cache)
    ratios = space.uniform_ratios(0.5)
    first = space.cost(ratios).latency_ms
    entries = len(table)
    assert space.cost(ratios).latency_ms == first and len(table) == entries
    assert cache.is_file()
    reread = LatencyTable(space.latency_layers(), TorchTarget(batch=BATCH, threads=1), cache=cache)
    assert len(reread) == entries  # read back, nothing timed again


def test_prediction_follows_width_and_tracks_measurement(model, flops_clock):
    # On a real clock both depend on this machine's speed and load; on the FLOPs clock they are exact.
    space, _, measured = _space_with_table(model)
    ratios = space.uniform_ratios(0.5)
    predicted = space.cost(ratios).latency_ms
    assert predicted < space.cost(space.uniform_ratios(0.25)).latency_ms < space.cost({}).latency_ms == pytest.approx(measured)
    subnet, _ = space.prune(ratios)
    # the layers timed one by one, calibrated on the unpruned network, predict the whole subnet's time
    assert predicted == pytest.approx(measure_latency(subnet, SHAPE, batch=BATCH), rel=1e-9)
