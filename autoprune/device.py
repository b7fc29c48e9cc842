"""Resolve ``--device`` early, so a missing GPU is a clear error rather than a traceback."""

from __future__ import annotations

import torch

from autoprune.errors import UserError


def resolve_device(name: str) -> str:
    """``name`` (``--device``) checked and returned as given: ``cpu``, ``cuda`` or ``cuda:N`` where that GPU
    exists, or ``mps`` where it is available. Raises ``UserError`` for any other name or a missing GPU."""
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {name}: there are {torch.cuda.device_count()} GPUs")
        return name
    if name == "mps" and torch.backends.mps.is_available():
        return name
    raise UserError(f"--device {name}: expected cpu, cuda or cuda:N")
