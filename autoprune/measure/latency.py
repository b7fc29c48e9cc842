"""Latency: measured on a deployment target (``autoprune.measure.target``), and predicted from a per-layer table.

Measuring a candidate means exporting it (seconds), so the search predicts: every conv/linear shape a
candidate needs is timed once on its own on the target (``LatencyTable``, cached per machine), and the sum is
scaled by the ratio measured/summed on the unpruned network, which accounts for the layers the table does
not time (BN, activations, pooling, adds). The prediction is checked on held-out candidates measured for
real (``autoprune.measure.predictor``).

Each layer is timed by its target (``Target.time_layer``); models compared with each other, by
``Target.time`` in interleaved rounds (``autoprune.measure.timing``).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from autoprune.measure import timing
from autoprune.measure.target import Target
from autoprune.models.contract import input_to, model_to


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], *, device: str = "cpu", batch: int = 1, warmup: int = 5,
    repeats: int = 30,
) -> float:
    """Median latency in ms of one forward pass of eager ``model`` (eval mode) at ``batch``, in the model's layout.
    ``input_shape`` is one sample's, without the batch (``(C, H, W)``); the input is random. The model is
    moved to ``device`` in place."""
    model = model_to(model, device).eval()
    x = input_to(torch.randn(batch, *input_shape, device=device), model)
    return timing.time_forward(torch.no_grad()(lambda: model(x)), device, warmup=warmup, repeats=repeats)


class LatencyTable:
    """Per-layer latencies on a target, timed on first use and cached as JSON.

    ``layers`` maps a layer name to a builder ``(in_dim, out_dim) -> (module, input shape)``; ``predict``
    takes each layer's (in, out) widths. Each layer is timed as ``target.prepare_layer`` runs it; the cache
    keys it by the target's runtime, device, batch and threads (``Target.key``) and the layer's type and
    shape, so one cache file serves every run on a machine (``cache``: None keeps the timings in memory).
    """

    def __init__(self, layers: Mapping[str, Callable[[int, int], tuple[nn.Module, tuple[int, ...]]]], target: Target,
                 *, cache: Path | None = None) -> None:
        self.layers = dict(layers)
        self.target = target
        self.cache = cache
        self.scale = 1.0
        self.offset = 0.0  # ms: what a pass costs besides its layers' times (``fit``)
        self._entries: dict[str, float] = _read_cache(cache)
        self._new: dict[str, float] = {}
        self._by_dims: dict[tuple[str, int, int], float] = {}  # what layer_ms answered: no layer built twice

    def layer_ms(self, name: str, in_dim: int, out_dim: int, *, again: bool = False) -> float:
        """Median ms of one pass of layer ``name`` built at widths ``(in_dim, out_dim)`` on the table's target;
        timed on first use (5 warm-up and 25 timed runs) and kept. ``again``: time it once more and keep the
        lower of the two, as other work on the machine only ever adds time (a timing taken while it was busy
        is replaced). Raises ``KeyError`` for a layer the table has no builder of."""
        known = self._by_dims.get((name, in_dim, out_dim))
        if known is not None and not again:
            return known
        module, shape = self.layers[name](in_dim, out_dim)
        key = f"{self.target.key}|{_describe(module)}|{'x'.join(map(str, shape))}"
        if key not in self._entries or again:
            ms = self.target.time_layer(self.target.prepare_layer(module, shape))
            self._entries[key] = self._new[key] = min(ms, self._entries.get(key, ms))
        self._by_dims[name, in_dim, out_dim] = self._entries[key]
        return self._entries[key]

    def raw_ms(self, dims: Mapping[str, tuple[int, int]]) -> float:
        """Sum in ms of ``layer_ms`` over every layer of the table at its ``(in, out)`` widths in ``dims``, not
        calibrated; new timings are saved to the cache. Raises ``KeyError`` where ``dims`` lacks one of the layers."""
        total = sum(self.layer_ms(name, *dims[name]) for name in self.layers)
        self.save()
        return total

    def calibrate(self, dims: Mapping[str, tuple[int, int]], measured_ms: float) -> None:
        """Scale predictions so the unpruned network (layer widths ``dims``) predicts its measured latency."""
        self.scale, self.offset = measured_ms / max(self.raw_ms(dims), 1e-9), 0.0

    def fit(self, points: list[tuple[Mapping[str, tuple[int, int]], float]]) -> None:
        """Calibrate on measured subnets, each ``(layer widths, measured ms)``, the unpruned network first: the
        least-squares line ``offset + scale x raw``. ``offset`` takes what does not grow with the layers' times:
        a pass's own overhead and the layers the table does not time, less the call overhead each layer timed
        alone carries (so it can be negative). Where the slope is not positive (one point, or noise), the scale
        alone through the first (``calibrate``)."""
        raws = [self.raw_ms(dims) for dims, _ in points]
        ms = [m for _, m in points]
        mean_raw, mean_ms = statistics.fmean(raws), statistics.fmean(ms)
        spread = sum((r - mean_raw) ** 2 for r in raws)
        scale = sum((r - mean_raw) * (m - mean_ms) for r, m in zip(raws, ms)) / spread if spread > 0 else 0.0
        if scale <= 0:
            self.calibrate(points[0][0], ms[0])
        else:
            self.scale, self.offset = scale, mean_ms - scale * mean_raw

    def predict(self, dims: Mapping[str, tuple[int, int]]) -> float:
        """Predicted ms of one forward pass at the target's batch of the subnet whose layers have the ``(in, out)``
        widths ``dims``: ``offset`` plus ``raw_ms`` times ``scale``."""
        return self.offset + self.scale * self.raw_ms(dims)

    def save(self) -> None:
        """Merge the new timings into the JSON cache (read again, written through a temporary file and
        replaced at once, so runs sharing it lose nothing) where some are new and a cache is set."""
        if self.cache is None or not self._new:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(self.cache), **self._new}
        tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
        tmp.replace(self.cache)
        self._new = {}

    def __len__(self) -> int:
        return len(self._entries)


def default_cache() -> Path:
    """The per-machine cache of layer timings: ``$AUTOPRUNE_CACHE_DIR/latency.json``, by default under
    ``$XDG_CACHE_HOME`` (``~/.cache``) ``/autoprune``. Delete it to time every layer again."""
    root = os.environ.get("AUTOPRUNE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "autoprune"
    return Path(root) / "latency.json"


def _read_cache(cache: Path | None) -> dict[str, float]:
    if cache is None or not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text())
    except ValueError:  # a cache cut short: timed again
        return {}


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (
            f"conv{module.in_channels}-{module.out_channels}-k{module.kernel_size}-s{module.stride}"
            f"-p{module.padding}-d{module.dilation}-g{module.groups}-b{module.bias is not None}"
        )
    if isinstance(module, nn.Linear):
        return f"linear{module.in_features}-{module.out_features}-b{module.bias is not None}"
    return repr(module)
