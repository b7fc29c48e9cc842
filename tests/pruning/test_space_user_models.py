"""The pruning space of the kinds of models users bring (tests/models/user_models/): which groups are
searched, in which steps, which layers are never pruned and why, and MACs that equal a count of what
the network runs, for the unpruned network and for pruned subnets.

The expected MACs are written out layer by layer (MACs of one 1x28x28 image): they are the independent
count. ``count_cost`` (torch's FLOP counter plus the fused attention and LSTM kernels) must agree with
them, and the space's cost must agree with ``count_cost`` on every pruned subnet.
"""

from __future__ import annotations

import functools
import importlib.util
import random
from pathlib import Path

import pytest
import torch

from autoprune.errors import UserError
from autoprune.measure.count import count_cost
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace

MODELS = Path(__file__).parents[1] / "models" / "user_models"
CLASSIFIER = "the classifier: its outputs are the classes"


def build(name: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"user_models_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.build().eval()


def conv(positions: int, kernel: int, cin: int, cout: int) -> int:
    return positions * kernel * cin * cout


# name -> (MACs of the unpruned network, written out; params of it)
EXPECTED_MACS = {
    # 3 calls of the shared block (3x3 convs 32->64->32 on 14x14), the stem, the classifier
    "reused_block": conv(196, 9, 1, 32) + 3 * (conv(196, 9, 32, 64) + conv(196, 9, 64, 32)) + 32 * 10,
    # the transposed conv does its multiply-adds per INPUT position: 7x7 inputs, 4x4 kernel, 32->32
    "transposed_conv": conv(196, 9, 1, 16) + conv(49, 9, 16, 32) + conv(49, 16, 32, 32) + conv(196, 1, 32, 32) + 320,
    # patchify (16 patches of 7x7), two blocks of 4-head attention on 16 tokens of 32 (q, k, v and output
    # projections, q.k^T and attention.v) and an MLP 32 -> 64 -> 32, then the head
    "attention_vit": conv(16, 49, 1, 32) + 2 * (16 * 4 * 32 * 32 + 2 * 16 * 16 * 32 + 2 * 16 * 32 * 64) + 320,
    # a 7x7 conv 2 -> 1 on the channel mean and max maps makes the gate
    "gate_broadcast": conv(784, 9, 1, 16) + conv(784, 49, 2, 1) + conv(196, 9, 16, 32) + conv(49, 9, 32, 32) + 320,
    "chunk_gating": conv(196, 9, 1, 32) + conv(49, 9, 16, 64) + conv(49, 9, 32, 64) + 320,
    # an LSTM layer over 14 steps: 4 gates x 32 hidden x (224 inputs + 32 hidden) per step
    "lstm_net": conv(196, 9, 1, 16) + 14 * 4 * 32 * (16 * 14 + 32) + 320,
    "conv1d_net": conv(28, 3, 28, 32) + conv(14, 3, 32, 64) + 64 * 10,
    # the functional conv 16 -> 32 on 7x7 counts though it is no nn.Conv2d
    "functional_conv": conv(196, 9, 1, 16) + conv(196, 9, 16, 16) + conv(49, 9, 16, 32) + 320,
}

# name -> (groups searched with their step, layers never pruned -> why)
EXPECTED_SPACE = {
    "gate_broadcast": ({"conv_c.0": 1, "conv_b.0": 1, "conv_a.0": 1},
                       {"fc": CLASSIFIER, "gate.squash": "a single output channel",
                        "gate.norm": "in group 'gate.squash': a single output channel"}),
    "transposed_conv": ({"refine.0": 1, "up.0": 1, "down2.0": 1, "down1.0": 1}, {"fc": CLASSIFIER}),
    "chunk_gating": ({"g3.conv": 2, "g2.conv": 2, "g1.conv": 2}, {"fc": CLASSIFIER}),
    "attention_vit": ({"blocks.1.mlp.2": 4, "blocks.1.mlp.0": 1, "blocks.0.mlp.0": 1}, {"head": CLASSIFIER}),
    "reused_block": ({"shared.3": 1, "shared.0": 1}, {"fc": CLASSIFIER}),
    "dict_output": ({"body.3": 1, "body.0": 1},
                    {"cls": CLASSIFIER, "aux": "its outputs are what the model returns ('aux')"}),
    "view_flatten": ({"fc1": 1, "c2": 1, "c1": 1}, {"fc2": CLASSIFIER}),
    "conv1d_net": ({"c2": 1, "c1": 1}, {"fc": CLASSIFIER}),
    "groupnorm_net": ({"c2": 4, "c1": 4}, {"fc": CLASSIFIER}),
    "grouped_conv": ({"c3": 1, "c2": 4, "c1": 4}, {"fc": CLASSIFIER}),
    "pixel_shuffle": ({"c2": 1, "c1": 1},
                      {"fc": CLASSIFIER, "up": "its channels pass through PixelShuffleBackward0 (32 -> 8 channels), "
                                               "which Torch-Pruning cannot map"}),
    "channel_shuffle": ({"c3": 1, "c2": 1},
                        {"fc": CLASSIFIER,
                         "c1": "its channels pass through TransposeBackward0 (2 -> 8 channels), which Torch-Pruning "
                               "cannot map",
                         "b1": "in group 'c1': its channels pass through TransposeBackward0 (2 -> 8 channels), which "
                               "Torch-Pruning cannot map"}),
    "linear_to_channels": ({"c1": 1},
                           {"fc": CLASSIFIER,
                            "fc0": "pruning it to 392 of 784 channels fails: RuntimeError: shape '[1, 16, 7, 7]' is "
                                   "invalid for input of size 392"}),
    "linear_to_map": ({"c1": 1, "fc0": 49}, {"fc": CLASSIFIER}),
    "lstm_net": ({"c1": 1},
                 {"fc": CLASSIFIER, "lstm": "a recurrent layer: its hidden width is not searched (its input width is)"}),
    "frozen_parts": ({"c2": 1, "c1": 1, "stem": 1}, {"fc": CLASSIFIER}),
    # autograd cannot see the embedding's link to c2 (detached): the probe sees its shape change
    "detached_embedding": ({"c1": 1},
                           {"fc": CLASSIFIER,
                            "c2": "pruning it to 8 of 16 channels fails: RuntimeError: what the model returns changes "
                                  "shape: [(1, 10), (1, 16)] -> [(1, 10), (1, 8)]",
                            "b2": "in group 'c2': pruning it to 8 of 16 channels fails: RuntimeError: what the model "
                                  "returns changes shape: [(1, 10), (1, 16)] -> [(1, 10), (1, 8)]"}),
    # runs at 8 channels (the probe), not at odd widths: searched, its odd candidates fail when scored
    "odd_widths": ({"c2": 1, "c1": 1}, {"fc": CLASSIFIER}),
    "functional_conv": ({"c1": 1},
                        {"fc": CLASSIFIER,
                         "c2": "its channels pass through ConvolutionBackward0 (16 -> 32 channels), which "
                               "Torch-Pruning cannot map",
                         "b2": "in group 'c2': its channels pass through ConvolutionBackward0 (16 -> 32 channels), "
                               "which Torch-Pruning cannot map",
                         "w": "in group 'c2': its channels pass through ConvolutionBackward0 (16 -> 32 channels), "
                              "which Torch-Pruning cannot map"}),
}


@functools.cache
def _space(name: str) -> tuple[PruningSpace, torch.Tensor]:
    """The space of a model (built once: pruning never changes it)."""
    x = torch.randn(1, 1, 28, 28)
    return PruningSpace(build(name), x), x


@pytest.mark.parametrize("name", sorted(EXPECTED_SPACE))
def test_groups_steps_and_unprunable_layers(name):
    space, _ = _space(name)
    groups, unprunable = EXPECTED_SPACE[name]
    assert {g.name: g.step for g in space.groups} == groups
    assert space.unprunable == unprunable


# where the analytic cost model cannot follow the model, so every candidate is counted by tracing
TRACED = {"functional_conv"}


@pytest.mark.parametrize("name", sorted(EXPECTED_MACS))
def test_unpruned_macs_count_every_call_and_op(name):
    space, x = _space(name)
    assert count_cost(space.model, x).macs == EXPECTED_MACS[name]
    assert space.base_cost.macs == EXPECTED_MACS[name]
    assert space.cost_check["mode"] == ("traced" if name in TRACED else "analytic")
    assert space.base_cost.params == sum(p.numel() for p in space.model.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_SPACE))
def test_pruned_subnets_cost_what_they_run(name):
    """Random subnets: widths a multiple of each group's step, the subnet runs in eval and train mode, and the
    space's MACs and params are those counted on the pruned network."""
    space, x = _space(name)
    rng = random.Random(name)
    for _ in range(2):
        ratios = {g.name: rng.uniform(0.1, 0.8) for g in space.groups}
        widths = space.kept_channels(ratios)
        assert all(widths[g.name] % g.step == 0 and 0 < widths[g.name] < g.channels for g in space.groups)
        subnet, kept = space.prune(ratios)
        assert {k: len(v) for k, v in kept.items()} == widths
        assert space.cost(ratios) == count_cost(subnet, x)
        subnet.train()(x.expand(4, -1, -1, -1))
        assert subnet.eval()(x) is not None


def test_cost_mode_is_traced_only_where_the_analytic_model_is_wrong():
    """An op the analytic model does not know (a functional conv) makes the space count every candidate by
    tracing; the cost check says how far off the analytic model was."""
    modes = {name: _space(name)[0].cost_check for name in ("functional_conv", "attention_vit")}
    assert modes["attention_vit"]["mode"] == "analytic" and modes["attention_vit"]["max_relative_error"] == 0
    assert modes["functional_conv"]["mode"] == "traced" and modes["functional_conv"]["max_relative_error"] > 0.1
    base = modes["functional_conv"]["base"]
    assert base["traced_macs"] == EXPECTED_MACS["functional_conv"]
    assert base["analytic_macs"] == EXPECTED_MACS["functional_conv"] - conv(49, 9, 16, 32)


def test_a_position_embedding_is_cut_with_the_residual_stream():
    space, _ = _space("attention_vit")
    assert "pos" in space.groups[0].members
    subnet, _ = space.prune({"blocks.1.mlp.2": 0.5})
    assert subnet.pos.shape == (1, 16, 16)
    assert space.cost({"blocks.1.mlp.2": 0.5}).params == sum(p.numel() for p in subnet.parameters())


def test_a_linear_viewed_as_channels_is_pruned_in_whole_7x7_blocks():
    space, x = _space("linear_to_map")
    assert space.groups[1].rules == ["its channels are pruned in units of 49"]
    subnet, kept = space.prune({"fc0": 0.5})
    blocks = {i // 49 for i in kept["fc0"]}
    assert len(blocks) == 8 and sorted(kept["fc0"]) == sorted(b * 49 + j for b in blocks for j in range(49))
    assert subnet.c1.in_channels == 8
    assert space.cost({"fc0": 0.5}) == count_cost(subnet, x)


def test_chunk_halves_are_pruned_in_pairs():
    """torch.chunk(2) gates value channel i by channel i + C: both go, or neither."""
    space, _ = _space("chunk_gating")
    _, kept = space.prune({"g2.conv": 0.5})
    channels = kept["g2.conv"]
    assert len(channels) == 32
    assert sorted(c for c in channels if c < 32) == sorted(c - 32 for c in channels if c >= 32)


def test_a_one_channel_gate_does_not_couple_the_channels_it_scales():
    space, _ = _space("gate_broadcast")
    subnet, _ = space.prune({"conv_a.0": 0.5})
    assert subnet.conv_a[0].out_channels == 8 and subnet.gate.squash.in_channels == 2
    assert subnet.gate.squash.out_channels == 1


def test_frozen_layers_are_pruned_with_their_buffers():
    """A frozen stem (requires_grad off) is found, and a BatchNorm kept as buffers is cut with its channels."""
    space, x = _space("frozen_parts")
    subnet, _ = space.prune({"stem": 0.5, "c1": 0.5})
    assert subnet.stem.out_channels == 8 and subnet.stem_bn.running_var.shape == (8,)
    assert subnet.b1.weight.shape == (8,) and not subnet.stem.weight.requires_grad
    # the kept channels compute what they computed before pruning: the stem's outputs are the kept ones
    torch.testing.assert_close(subnet.stem(x), space.model.stem(x)[:, sorted(space.kept_indices(
        {"stem": 0.5})["stem"])])


def test_round_to_combines_with_the_layers_rules():
    space = PruningSpace(build("groupnorm_net"), torch.randn(1, 1, 28, 28), SpaceConfig(round_to=6))
    assert [g.step for g in space.groups] == [12, 12]
    assert space.groups[0].rules == ["GroupNorm 'g2' has 4 groups"]
    assert space.kept_channels({"c2": 0.5}) == {"c2": 12, "c1": 16}


def test_conv3d_on_volumes():
    x = torch.randn(1, 1, 8, 16, 16)
    space = PruningSpace(build("volume"), x)
    assert {g.name: g.channels for g in space.groups} == {"8": 32, "3": 16, "0": 8}
    # 3x3x3 convs, stride 2: 4x8x8 then 2x4x4 output positions; then linear 16 -> 32 -> 10
    assert space.base_cost.macs == conv(256, 27, 1, 8) + conv(32, 27, 8, 16) + 16 * 32 + 32 * 10
    ratios = {"8": 0.5, "3": 0.5, "0": 0.5}
    subnet, _ = space.prune(ratios)
    assert space.cost(ratios) == count_cost(subnet, x)


def test_groups_that_fail_only_together_are_refused_in_one_line():
    class Picky(torch.nn.Module):
        """Runs with either conv pruned, not with both."""

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 8, 3)
            self.b = torch.nn.Conv2d(8, 8, 3)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            if self.a.out_channels < 8 and self.b.out_channels < 8:
                raise ValueError("both pruned")
            return self.fc(self.b(self.a(x)).mean((2, 3)))

    with pytest.raises(UserError, match=r"does not run with its groups \['b', 'a'\] pruned together, though each "
                                        r"runs pruned alone: ValueError: both pruned"):
        PruningSpace(Picky(), torch.randn(1, 1, 8, 8))


def test_a_model_that_refuses_some_widths_is_searched_and_counted_where_it_runs():
    space, x = _space("odd_widths")
    assert space.cost_check["mode"] == "analytic" and space.cost_check["subnets"] >= 2
    odd = {"c1": 9 / 16}  # keeps 7 channels: the model raises
    assert space.kept_channels(odd)["c1"] == 7
    assert space.cost(odd).macs == conv(196, 9, 1, 7) + conv(49, 9, 7, 32) + 320  # the analytic count
    with pytest.raises(ValueError, match="odd width: 7 channels"):
        space.prune(odd)[0](x)
