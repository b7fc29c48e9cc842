"""MACs and params of any module by running it: for subnets the analytic cost model cannot
describe (e.g. pruned by another tool)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.pruning.space import Cost


@torch.no_grad()
def count_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """MACs (torch's FLOP counter / 2: conv and matmul) of one sample, and parameter count."""
    model = model.cpu().eval()
    with FlopCounterMode(display=False) as counter:
        model(example_input[:1].cpu())
    return Cost(counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()))
