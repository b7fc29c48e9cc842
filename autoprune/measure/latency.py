"""Latency: measured on the real network, and predicted from a per-layer lookup table.

Measuring every candidate would cost seconds each, so the search predicts: every conv/linear
shape a candidate needs is timed once on its own (cached in the run directory, keyed by device,
batch and shape), and the sum is scaled by the ratio measured/summed on the unpruned network,
which accounts for the layers the table does not time (BN, activations, pooling, adds).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from autoprune.models.contract import input_to, model_to


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_forward(fn: Callable[[], object], device: str, *, warmup: int = 5, repeats: int = 30) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn()`` after ``warmup`` calls, CUDA synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - tic) * 1000.0)
    return statistics.median(samples)


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], *, device: str = "cpu", batch: int = 1, warmup: int = 5,
    repeats: int = 30,
) -> float:
    """Median latency in ms of one forward pass of ``model`` (eval mode) at ``batch``, in the model's layout.
    ``input_shape`` is one sample's, without the batch (``(C, H, W)``); the input is random. The model is
    moved to ``device`` in place."""
    model = model_to(model, device).eval()
    x = input_to(torch.randn(batch, *input_shape, device=device), model)
    return time_forward(lambda: model(x), device, warmup=warmup, repeats=repeats)


class LatencyTable:
    """Per-layer latencies, timed on first use and cached as JSON.

    ``layers`` maps a layer name to a builder ``(in_dim, out_dim) -> (module, input shape)``;
    ``predict`` takes each layer's (in, out) widths. Layers are timed in ``layout``, the model's
    (``autoprune.models.contract``): channels_last, or contiguous for a model that runs in NCHW.
    """

    def __init__(
        self,
        layers: Mapping[str, Callable[[int, int], tuple[nn.Module, tuple[int, ...]]]],
        *,
        device: str,
        batch: int,
        cache: Path | None = None,
        layout: str = "channels_last",
    ) -> None:
        self.layers = dict(layers)
        self.layout = layout
        self.device = device
        self.batch = batch
        self.cache = cache
        self.scale = 1.0
        self._entries: dict[str, float] = {}
        if cache is not None and cache.exists():
            self._entries = json.loads(cache.read_text())
        self._dirty = False

    def layer_ms(self, name: str, in_dim: int, out_dim: int) -> float:
        """Median ms of one forward pass of layer ``name`` built at widths ``(in_dim, out_dim)``, at the table's
        batch and device; timed on first use (3 warm-up and 15 timed runs) and kept, keyed by device, batch,
        layer type and shape. Raises ``KeyError`` for a layer the table has no builder of."""
        module, shape = self.layers[name](in_dim, out_dim)
        key = f"{self.device}|b{self.batch}|{_describe(module)}|{'x'.join(map(str, shape))}"
        if self.layout != "channels_last":
            key += f"|{self.layout}"
        if key not in self._entries:
            module = module.to(self.device).eval()
            if self.layout == "channels_last":
                module = module.to(memory_format=torch.channels_last)
            x = input_to(torch.randn(self.batch, *shape, device=self.device), self.layout)
            self._entries[key] = time_forward(lambda: module(x), self.device, warmup=3, repeats=15)
            self._dirty = True
        return self._entries[key]

    def raw_ms(self, dims: Mapping[str, tuple[int, int]]) -> float:
        """Sum in ms of ``layer_ms`` over every layer of the table at its ``(in, out)`` widths in ``dims``, not
        calibrated; new timings are saved to the cache. Raises ``KeyError`` where ``dims`` lacks one of the layers."""
        total = sum(self.layer_ms(name, *dims[name]) for name in self.layers)
        self.save()
        return total

    def calibrate(self, dims: Mapping[str, tuple[int, int]], measured_ms: float) -> None:
        """Scale predictions so the unpruned network predicts its measured latency."""
        self.scale = measured_ms / max(self.raw_ms(dims), 1e-9)

    def predict(self, dims: Mapping[str, tuple[int, int]]) -> float:
        """Predicted ms of one forward pass at the table's batch of the subnet whose layers have the ``(in, out)``
        widths ``dims``: ``raw_ms`` times the calibration's ``scale``."""
        return self.scale * self.raw_ms(dims)

    def save(self) -> None:
        """Write the timings to the JSON cache (through a temporary file, replaced at once) where some are new and
        the cache's directory exists; otherwise nothing."""
        if self.cache is not None and self._dirty and self.cache.parent.is_dir():
            tmp = self.cache.with_name(f".{self.cache.name}.tmp")
            tmp.write_text(json.dumps(self._entries, indent=0, sort_keys=True))
            tmp.replace(self.cache)
            self._dirty = False

    def __len__(self) -> int:
        return len(self._entries)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (
            f"conv{module.in_channels}-{module.out_channels}-k{module.kernel_size}-s{module.stride}"
            f"-p{module.padding}-d{module.dilation}-g{module.groups}-b{module.bias is not None}"
        )
    if isinstance(module, nn.Linear):
        return f"linear{module.in_features}-{module.out_features}-b{module.bias is not None}"
    return repr(module)
