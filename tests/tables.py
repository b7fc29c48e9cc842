"""Latency tables that time nothing, for tests of what is built on a table: their raw time of a network is a
formula of its layers' widths."""

from __future__ import annotations

import math

from autoprune.measure.latency import LatencyTable


class RawTable(LatencyTable):
    """Raw time: the sum of in x out over the timed layers."""

    def raw_ms(self, dims) -> float:
        return float(sum(dims[name][0] * dims[name][1] for name in self.layers))


class TiledTable(LatencyTable):
    """Raw time as a kernel tiled by 8 channels would take it, not in proportion to MACs: per layer, one unit of
    launch and then one per 8 x 8 tile of (in, out)."""

    def raw_ms(self, dims) -> float:
        return float(sum(1 + math.ceil(dims[name][0] / 8) * math.ceil(dims[name][1] / 8) for name in self.layers))
