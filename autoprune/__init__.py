"""autoprune: find how wide each layer of a trained PyTorch network should be, under a budget."""

from autoprune.config import SearchConfig
from autoprune.pipeline import SearchResult, search
from autoprune.results import load_subnet

__all__ = ["SearchConfig", "SearchResult", "load_subnet", "search"]
__version__ = "0.1.0"
