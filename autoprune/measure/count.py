"""MACs and params of any module by running it: the traced count every analytic cost is checked
against, and the cost of subnets the analytic model cannot describe.

The count is torch's ``FlopCounterMode`` (aten ops, each time they run: a module called three times
counts three times; convolutions of every kind, transposed and 1-d/3-d included; ``mm``/``bmm``/
``addmm``) plus formulas for the fused CPU kernels it does not know: scaled-dot-product attention,
the fast path of ``nn.MultiheadAttention`` and oneDNN's LSTM layer. MACs = FLOPs / 2.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.measure.cost import Cost

__all__ = ["Cost", "count_cost", "param_count", "traced_macs"]

aten = torch.ops.aten


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """(B, H, L, E) x (B, H, S, E)^T, then (B, H, L, S) x (B, H, S, Ev): 2 FLOPs a multiply-add."""
    *batch, length, dim = query
    source, value_dim = key[-2], value[-1]
    return 2 * math.prod(batch) * length * source * (dim + value_dim)


def _native_mha_flops(query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                      *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's fused inference path: the three input projections, attention, the output projection."""
    batch, length, _ = query
    source = key[1]
    projections = batch * embed_dim * embed_dim * (length + 2 * source + length)
    attention = batch * length * source * 2 * embed_dim
    return 2 * (projections + attention)


def _mkldnn_lstm_flops(inputs, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    """One LSTM layer (one direction) over the sequence: every step multiplies the input and the hidden state
    by the four gates' weights."""
    steps = math.prod(inputs) // inputs[-1]
    return 2 * steps * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])


_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._native_multi_head_attention: _native_mha_flops,
    aten.mkldnn_rnn_layer: _mkldnn_lstm_flops,
}


def traced_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs (FLOPs / 2) of one forward pass of ``model`` on ``example_input``, shape (1, ...): one sample,
    counted as it runs, under ``torch.no_grad``. Whatever the model raises on that input propagates."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FORMULAS) as counter:
        model(example_input)
    return counter.get_total_flops() // 2


def param_count(model: nn.Module) -> int:
    """Learnable parameters, each tensor once however many layers share it."""
    return sum(p.numel() for p in model.parameters())


def count_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """MACs of one sample (``traced_macs`` of ``example_input[:1]``) and the parameter count of ``model``,
    run on the CPU in eval mode (``model`` is moved there and left so). No latency."""
    model = model.cpu().eval()
    return Cost(traced_macs(model, example_input[:1].cpu()), param_count(model))
