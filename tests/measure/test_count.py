"""The traced count every analytic cost is checked against: fused CPU kernels the FLOP counter does not
know are counted by their own formulas (MACs written out below)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.measure.count import (
    Cost,
    _mkldnn_lstm_flops,
    _sdpa_flops,
    count_cost,
    param_count,
    traced_macs,
)


class Attention(nn.Module):
    """Scaled dot-product attention on (1, 2 heads, 5 queries, 8) against 7 keys, values of width 6."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.randn(1, 2, 7, 8))
        self.v = nn.Parameter(torch.randn(1, 2, 7, 6))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, self.k, self.v)


def test_scaled_dot_product_attention_counts_both_matmuls():
    cost = count_cost(Attention(), torch.randn(1, 2, 5, 8))
    assert cost.macs == 2 * 5 * 7 * 8 + 2 * 5 * 7 * 6  # q.k^T, then attention.v, per head
    assert cost.params == 2 * 7 * 8 + 2 * 7 * 6


def test_multihead_attention_fast_path():
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    cost = count_cost(SelfAttention(), torch.randn(1, 10, 16))
    assert cost.macs == 10 * 4 * 16 * 16 + 2 * 10 * 10 * 16  # projections, then q.k^T and attention.v


def test_bidirectional_two_layer_lstm():
    lstm = nn.LSTM(12, 5, num_layers=2, bidirectional=True, batch_first=True)

    class Reader(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0]

    cost = count_cost(Reader(), torch.randn(1, 9, 12))
    # 9 steps, 2 directions, 4 gates of 5: layer 1 reads 12 inputs, layer 2 the 10 of both directions
    assert cost.macs == 9 * 2 * 4 * 5 * ((12 + 5) + (10 + 5))
    assert cost.params == sum(p.numel() for p in lstm.parameters())


# --- what the mutation run (make mutate) found untested ------------------------------------------------


def test_cpu_flash_attention_kernel_is_counted_by_its_formula():
    """torch 2.13 traces F.scaled_dot_product_attention without this kernel; other versions call it."""
    k, v = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)

    class Flash(nn.Module):
        def forward(self, q):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]

    assert count_cost(Flash(), torch.randn(1, 2, 5, 8)).macs == 2 * 5 * 7 * (8 + 8)
    # the formula in FLOPs, values of another width than the keys (B, H, L, E), (B, H, S, E), (B, H, S, Ev)
    assert _sdpa_flops((3, 2, 5, 8), (3, 2, 7, 8), (3, 2, 7, 6)) == 2 * 3 * 2 * 5 * 7 * (8 + 6)


def test_lstm_formula_counts_whole_steps():
    flops = _mkldnn_lstm_flops((9, 12), (20, 12), (20, 5))
    assert flops == 2 * 9 * (20 * 12 + 20 * 5) and type(flops) is int


def test_count_cost_is_per_sample_in_eval_mode_and_prints_nothing(capsys):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model.train()
    cost = count_cost(model, torch.randn(5, 3, 6, 6))  # a batch of 5: the cost of one sample
    assert cost == Cost(macs=3 * 4 * 9 * 16 + 64 * 2, params=(3 * 9 * 4 + 4) + 8 + (64 * 2 + 2))
    assert type(cost.macs) is int and cost.latency_ms is None
    assert not model.training
    assert capsys.readouterr().out == ""


def test_shared_parameters_count_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert param_count(model) == 20
    assert traced_macs(model, torch.randn(1, 4)) == 2 * 16  # but it runs twice
