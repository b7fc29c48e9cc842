"""The analytic cost model itself (autoprune/measure/layers.py), layer by layer, against the traced count.

PruningSpace falls back to tracing every candidate where set-up finds the analytic model wrong, so the
space's own tests pass on a broken formula; these check the formulas directly: for each kind of layer,
the MACs and params the model gives at other widths equal the traced count of a fresh layer of those
widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.measure.count import count_cost
from autoprune.measure.layers import LayerShape, _shape_of, is_depthwise, out_width, trace_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _shapes(model, x, logits=None):
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    return trace_layers(model, x, names, logits)


def _one(layer, x):
    """The LayerShape of a model made of ``layer`` alone."""
    shapes, _ = _shapes(nn.Sequential(layer), x)
    assert list(shapes) == ["0"]
    return shapes["0"]


def _check_build(shape, widths):
    """A fresh layer built at each (in, out) costs what the shape says."""
    for in_dim, out_dim in widths:
        layer, input_shape = shape.build(in_dim, out_dim)
        traced = count_cost(layer, torch.randn(1, *input_shape))
        assert (traced.macs, traced.params) == (shape.macs(in_dim, out_dim), shape.params(in_dim, out_dim))


def test_conv2d_with_stride_padding_and_bias():
    conv = nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, bias=True)
    shape = _one(conv, torch.randn(1, 3, 11, 9))
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.kernel, shape.positions, shape.has_bias, shape.calls) == (
        "conv", 3, 8, 15, 6 * 5, True, 1)
    assert shape.macs(3, 8) == count_cost(conv, torch.randn(1, 3, 11, 9)).macs == 15 * 30 * 3 * 8
    assert shape.params(3, 8) == 3 * 8 * 15 + 8
    _check_build(shape, [(3, 8), (2, 5), (1, 1)])


def test_conv_without_bias_and_dilated():
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False)
    shape = _one(conv, torch.randn(1, 4, 7, 7))
    assert shape.has_bias is False and shape.positions == 49
    assert shape.params(4, 6) == 4 * 6 * 9
    _check_build(shape, [(4, 6), (3, 2)])


def test_depthwise_conv():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    assert is_depthwise(conv)
    shape = _one(conv, torch.randn(1, 6, 5, 5))
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.kernel, shape.positions) == ("depthwise", 1, 6, 9, 25)
    assert shape.macs(1, 6) == 9 * 25 * 6 and shape.params(1, 6) == 6 * 9 + 6
    _check_build(shape, [(1, 6), (1, 3)])


def test_what_is_not_depthwise():
    assert not is_depthwise(nn.Conv2d(6, 6, 3))  # one group
    assert not is_depthwise(nn.Conv2d(6, 12, 3, groups=6))  # a channel multiplier
    assert not is_depthwise(nn.Conv2d(6, 6, 3, groups=3))  # grouped, not depthwise
    assert not is_depthwise(nn.Linear(6, 6))
    assert not is_depthwise(nn.Conv2d(1, 1, 3))  # one channel, one group: a plain conv
    assert is_depthwise(nn.Conv1d(4, 4, 3, groups=4)) and is_depthwise(nn.Conv2d(2, 2, 3, groups=2))


def test_grouped_conv_divides_the_kernel_by_its_groups():
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False)
    shape = _one(conv, torch.randn(1, 8, 4, 4))
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.kernel) == ("conv", 8, 12, 9 / 4)
    assert shape.macs(8, 12) == count_cost(conv, torch.randn(1, 8, 4, 4)).macs
    _check_build(shape, [(8, 12), (4, 8)])


def test_two_groups():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    shape = _one(conv, torch.randn(1, 4, 5, 5))
    assert (shape.kind, shape.kernel) == ("conv", 9 / 2)
    assert shape.macs(4, 6) == count_cost(conv, torch.randn(1, 4, 5, 5)).macs


def test_channel_multiplier_conv_is_grouped():
    conv = nn.Conv2d(4, 8, 3, groups=4)
    shape = _one(conv, torch.randn(1, 4, 6, 6))
    assert (shape.kind, shape.kernel) == ("conv", 9 / 4)
    _check_build(shape, [(4, 8)])


def test_transposed_conv_counts_input_positions_and_keeps_its_output_padding():
    conv = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(1, 4, 5, 6)
    shape = _one(conv, x)
    assert (shape.kind, shape.positions) == ("conv", 30)  # the input's 5 x 6, not the output's 10 x 12
    assert shape.macs(4, 3) == count_cost(conv, x).macs
    layer, input_shape = shape.build(2, 5)
    assert type(layer) is nn.ConvTranspose2d and layer.output_padding == (1, 1) and input_shape == (2, 5, 6)
    assert layer(torch.randn(1, *input_shape)).shape == (1, 5, 10, 12)
    _check_build(shape, [(4, 3), (2, 5)])


def test_conv1d_and_conv3d():
    for conv, x in ((nn.Conv1d(3, 5, 3, padding=1), torch.randn(1, 3, 10)),
                    (nn.Conv3d(2, 4, 3, bias=False), torch.randn(1, 2, 4, 5, 6))):
        shape = _one(conv, x)
        assert shape.macs(conv.in_channels, conv.out_channels) == count_cost(conv, x).macs
        _check_build(shape, [(conv.in_channels, conv.out_channels), (1, 2)])


def test_build_keeps_stride_padding_dilation_and_bias():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=3, dilation=2, bias=False)
    layer, input_shape = _one(conv, torch.randn(1, 3, 9, 9)).build(2, 7)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (2, 7, (3, 3))
    assert (layer.stride, layer.padding, layer.dilation, layer.groups, layer.bias) == ((2, 2), (3, 3), (2, 2), 1, None)
    assert input_shape == (2, 9, 9)
    depthwise = _one(nn.Conv2d(4, 4, 3, groups=4), torch.randn(1, 4, 5, 5))
    layer, input_shape = depthwise.build(1, 3)
    assert (layer.in_channels, layer.out_channels, layer.groups) == (3, 3, 3) and input_shape == (3, 5, 5)


def test_linear_on_tokens():
    linear = nn.Linear(6, 4)
    x = torch.randn(1, 7, 6)
    shape = _one(linear, x)
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.kernel, shape.positions, shape.has_bias) == (
        "linear", 6, 4, 1, 7, True)
    assert shape.macs(6, 4) == count_cost(linear, x).macs == 7 * 6 * 4
    assert type(shape.positions) is int and type(shape.macs(6, 4)) is int
    assert shape.params(6, 4) == 6 * 4 + 4
    layer, input_shape = shape.build(3, 2)
    assert input_shape == (7, 3) and layer.bias is not None
    _check_build(shape, [(6, 4), (3, 2)])
    plain = _one(nn.Linear(5, 3, bias=False), torch.randn(1, 5))
    assert (plain.positions, plain.params(5, 3), plain.build(2, 2)[0].bias) == (1, 15, None)


def test_a_layer_called_three_times_counts_three_times():
    class Thrice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(self.conv(x)))

    model, x = Thrice(), torch.randn(1, 3, 4, 4)
    shapes, _ = _shapes(model, x)
    assert (shapes["conv"].calls, shapes["conv"].positions) == (3, 48)
    assert shapes["conv"].macs(3, 3) == count_cost(model, x).macs


def test_attention_projections_and_matmuls():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, q, kv=None):
            kv = self.attention.in_proj_weight.new_ones(1, 5, 8) if kv is None else kv
            return self.attention(q, kv, kv, need_weights=False)[0]

    q = torch.randn(1, 3, 8)
    shapes, _ = _shapes(Cross(), q)
    shape = shapes["attention"]
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.positions, shape.source_positions, shape.pairs,
            shape.heads, shape.has_bias, shape.fixed_params) == ("attention", 8, 8, 3, 5, 15, 2, True, 0)
    # q and output projections over 3 queries, k and v over 5 keys; q.k^T and attention.v over 15 pairs
    assert shape.macs(8, 8) == 2 * (3 + 5) * 8 * 8 + 2 * 15 * 8 == count_cost(Cross(), q).macs
    assert shape.params(8, 8) == 4 * 64 + 4 * 8 == sum(p.numel() for p in attention.parameters())
    assert shape.macs(4, 4) == 2 * 8 * 16 + 2 * 15 * 4 and shape.params(4, 4) == 4 * 16 + 16


class SelfAttention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def _attention(attention, x):
    shapes, _ = _shapes(SelfAttention(attention), x)
    return shapes["attention"]


def test_attention_called_twice_and_with_keywords():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x):
            kv = x[:, :3]
            h = self.attention(x, kv, value=kv, need_weights=False)[0]  # the key by position, the value by name
            return self.attention(h, key=h, value=h, need_weights=False)[0]  # by name: the query's length

    shapes, _ = _shapes(Twice(), torch.randn(1, 5, 4))
    shape = shapes["attention"]
    assert (shape.calls, shape.positions, shape.source_positions, shape.pairs) == (2, 10, 8, 15 + 25)


def test_attention_sequence_first_unbatched_and_with_extra_keys():
    seq_first = nn.MultiheadAttention(6, 3, bias=False, add_bias_kv=True)  # (L, N, E)
    shape = _attention(seq_first, torch.randn(4, 1, 6))
    assert (shape.positions, shape.source_positions, shape.pairs) == (4, 4, 16)
    assert shape.has_bias is False and shape.fixed_params == 12  # bias_k and bias_v
    assert shape.params(6, 6) == 4 * 36 + 12 == sum(p.numel() for p in seq_first.parameters())
    unbatched = _attention(nn.MultiheadAttention(6, 2, batch_first=True), torch.randn(5, 6))  # (L, E)
    assert (unbatched.positions, unbatched.source_positions) == (5, 5)


@pytest.mark.parametrize("kind, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_layers(kind, gates):
    rnn = kind(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(1, 7, 5)
    shape = _one(rnn, x)
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.positions, shape.heads, shape.layers,
            shape.directions, shape.has_bias) == ("recurrent", 5, 8, 7, gates, 2, 2, True)
    # per step, direction and gate: hidden x (inputs + hidden); the second layer reads both directions
    assert shape.macs(5, 8) == 7 * 2 * gates * 4 * ((5 + 4) + (8 + 4))
    assert type(shape.macs(5, 8)) is int and type(shape.params(5, 8)) is int  # whole hidden units per direction
    assert shape.params(5, 8) == sum(p.numel() for p in rnn.parameters())
    if kind is nn.LSTM:
        assert shape.macs(5, 8) == count_cost(rnn, x).macs
    fresh = kind(3, 2, num_layers=2, bidirectional=True, batch_first=True, bias=False)
    assert _one(fresh, torch.randn(1, 7, 3)).params(3, 4) == sum(p.numel() for p in fresh.parameters())
    assert shape.params(3, 4) == sum(p.numel() for p in kind(3, 2, num_layers=2, bidirectional=True).parameters())


def test_recurrent_sequence_first_and_unbatched():
    assert _one(nn.GRU(3, 2), torch.randn(6, 1, 3)).positions == 6
    one_way = _one(nn.RNN(3, 2, batch_first=True), torch.randn(6, 3))  # unbatched (L, H_in)
    assert (one_way.positions, one_way.directions, one_way.out_dim) == (6, 1, 2)
    assert one_way.macs(3, 2) == 6 * 2 * (3 + 2) and one_way.params(3, 2) == 2 * (3 + 2 + 2)


def test_what_the_model_does_not_describe_keeps_its_parameters():
    projected = nn.LSTM(4, 6, proj_size=3, batch_first=True)
    shape = _one(projected, torch.randn(1, 5, 4))
    assert (shape.kind, shape.fixed_params) == ("other", sum(p.numel() for p in projected.parameters()))
    assert shape.macs(4, 6) == 0 and shape.params(1, 1) == shape.fixed_params
    # a packed sequence (the trace skips it: its output is not a tensor; the model refuses it anyway)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, 4), [5, 3], batch_first=True)
    lstm = nn.LSTM(4, 3, batch_first=True)
    shape = _shape_of(lstm, (packed,), torch.zeros(8, 3))
    assert (shape.kind, shape.fixed_params) == ("other", sum(p.numel() for p in lstm.parameters()))
    embedding = _one(nn.Embedding(10, 4), torch.tensor([[1, 2, 3]]))
    assert (embedding.kind, embedding.fixed_params, embedding.macs(1, 1)) == ("other", 40, 0)


@pytest.mark.parametrize("norm, x, width, bias", [
    (nn.BatchNorm2d(6), torch.randn(2, 6, 3, 3), 6, True),
    (nn.BatchNorm1d(5, affine=True), torch.randn(2, 5), 5, True),
    (nn.GroupNorm(2, 6), torch.randn(1, 6, 3, 3), 6, True),
    (nn.LayerNorm(7, bias=False), torch.randn(1, 2, 7), 7, False),
    (nn.InstanceNorm2d(4, affine=True), torch.randn(1, 4, 3, 3), 4, True),
])
def test_norm_layers(norm, x, width, bias):
    shape = _one(norm, x)
    assert (shape.kind, shape.in_dim, shape.out_dim, shape.has_bias) == ("norm", width, width, bias)
    assert type(shape.in_dim) is int
    assert shape.params(width, width) == sum(p.numel() for p in norm.parameters())
    assert shape.params(3, 2) == (4 if bias else 2) and shape.macs(width, width) == 0


def test_a_layer_called_by_keyword_is_not_traced():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(input=x)

    shapes, classifier = _shapes(Keyword(), torch.randn(1, 3))
    assert shapes == {} and classifier is None


def test_a_module_with_its_own_parameter_and_children_keeps_only_its_own():
    class Gain(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) * self.gain

    shapes, _ = _shapes(Gain(), torch.randn(1, 3))
    assert (shapes[""].kind, shapes[""].fixed_params) == ("other", 3)
    assert shapes["fc"].params(3, 3) == 12


def test_a_loose_parameter_cut_with_a_group():
    shape = LayerShape("param", kernel=3)
    assert shape.params(5, 4) == 12 and shape.params(2, 9) == 6 and shape.macs(5, 4) == 0
    assert LayerShape("other", fixed_params=11).params(3, 3) == 11
    assert LayerShape("norm", has_bias=False).params(1, 5) == 5


def test_the_classifier_is_the_last_layer_as_wide_as_the_logits():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)
            self.fc = nn.Linear(10, 10)
            self.aux = nn.Linear(10, 4)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return {"aux": self.aux(h), "logits": self.fc(h)}

    model = Net()
    shapes, classifier = _shapes(model, torch.randn(1, 1, 5, 5), lambda out: out["logits"])
    assert classifier is model.fc and list(shapes) == ["conv", "aux", "fc"]  # in the order they ran
    _, classifier = _shapes(model, torch.randn(1, 1, 5, 5), lambda out: out["aux"])
    assert classifier is model.aux
    _, classifier = _shapes(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), torch.randn(1, 1, 4, 4))
    assert classifier is None  # the logits are the conv's 2 x 2 x 2 flattened: no layer is 8 wide
    _, classifier = _shapes(nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)), torch.randn(1, 4))
    assert classifier is None  # 1-d logits: no width to match


def test_a_tuple_output_is_read_by_its_first_tensor():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x), None

    shapes, classifier = _shapes(Pair(), torch.randn(1, 3), lambda out: out[0])
    assert list(shapes) == ["fc"] and classifier is not None


def test_a_model_that_does_not_run_is_a_user_error():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(UserError) as error:
        _shapes(model, torch.randn(1, 5))
    assert str(error.value).startswith("the model does not run on the data's input shape (1, 5): ")
    assert model[0]._forward_hooks == {}  # the hooks are removed


def test_out_width():
    assert out_width(nn.Conv2d(2, 7, 1)) == 7 and out_width(nn.Linear(2, 5)) == 5
    assert out_width(nn.ConvTranspose1d(3, 4, 2)) == 4
