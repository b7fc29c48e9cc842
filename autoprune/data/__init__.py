"""Data sources behind one door: ``load_data(spec)`` returns an in-memory ``DataBundle``.

Everything is held as tensors so that the hot path (recalibrate + evaluate a candidate)
slices batches out of memory instead of paying a DataLoader per candidate.
"""

from autoprune.data.bundle import DataBundle, Split
from autoprune.data.registry import get_data_source, list_data_sources, load_data

__all__ = ["DataBundle", "Split", "get_data_source", "list_data_sources", "load_data"]
