"""The traced count every analytic cost is checked against: fused CPU kernels the FLOP counter does not
know are counted by their own formulas (MACs written out below)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.measure.count import count_cost


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
