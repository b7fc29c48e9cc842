import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import autoprune
from autoprune.errors import UserError
from autoprune.measure.count import Cost, count_cost
from autoprune.models import create_model
from autoprune.pruning.config import SpaceConfig, load_space_config
from autoprune.pruning.space import PruningSpace, apply_kept

pytestmark = pytest.mark.usefixtures("one_thread")

INNER = [f"layer{stage}.{block}.conv1" for stage in (1, 2, 3) for block in range(3)]


def _resnet20():
    return create_model("resnet20", in_channels=1, num_classes=10)


def _example():
    return torch.randn(1, 1, 28, 28)


def _param_count(model):
    return sum(p.numel() for p in model.parameters())


def _counted_macs(model, x):
    """MACs of conv and linear layers as torch's FLOP counter sees them (FLOPs / 2)."""
    ops = {torch.ops.aten.convolution, torch.ops.aten.addmm, torch.ops.aten.mm}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()["Global"]
    assert set(counts) <= ops
    return sum(counts.values()) / 2


def _grid_ratios(space, seed):
    """One ratio per group, drawn on the space's grid within the group's bounds."""
    rng = np.random.default_rng(seed)
    step = space.config.step
    ratios = {}
    for g in space.groups:
        points = round((g.high - g.low) / step) + 1
        ratios[g.name] = round(g.low + step * int(rng.integers(0, points)), 6)
    return ratios


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = _resnet20()
    return model, PruningSpace(model, _example())


def test_group_names_are_stable(resnet):
    _, space = resnet
    torch.manual_seed(1)
    other = PruningSpace(_resnet20(), _example())
    assert other.group_names == space.group_names


def test_groups_are_named_by_root_module(resnet):
    model, space = resnet
    modules = dict(model.named_modules())
    assert len(space.group_names) == len(set(space.group_names)) == 12
    for name in space.group_names:
        assert isinstance(modules[name], nn.Conv2d)
    assert "fc" not in space.group_names
    assert all(not any(m == "fc" for m in g.members) for g in space.groups)


def test_resnet20_has_nine_inner_groups_and_three_residual_streams(resnet):
    _, space = resnet
    assert set(INNER) <= set(space.group_names)
    inner = {g.name: g for g in space.groups if g.name in INNER}
    assert [inner[n].channels for n in INNER] == [16] * 3 + [32] * 3 + [64] * 3
    for name, g in inner.items():
        assert g.members == [name, name.replace("conv1", "bn1")]

    streams = sorted((g for g in space.groups if g.name not in INNER), key=lambda g: g.channels)
    assert [g.channels for g in streams] == [16, 32, 64]
    for stage, g in enumerate(streams, start=1):
        assert {f"layer{stage}.{b}.bn2" for b in range(3)} <= set(g.members)
        assert {f"layer{stage}.{b}.conv2" for b in range(3)} <= set(g.members)
    assert streams[0].name == "conv1"


def test_base_cost_is_the_real_model(resnet):
    model, space = resnet
    assert space.cost({}) == space.base_cost
    assert space.base_cost.params == _param_count(model) == 272_186
    assert space.base_cost.macs == _counted_macs(model, _example())


@pytest.mark.parametrize(
    "name, ratio, expected",
    [
        ("layer2.0.conv1", 0.5, 16),
        ("layer3.1.conv1", 0.3, 45),
        ("conv1", 0.7, 5),
        ("layer1.0.conv1", 0.99, 1),
        ("layer3.2.conv1", 0.0, 64),
    ],
)
def test_kept_channels(resnet, name, ratio, expected):
    _, space = resnet
    kept = space.kept_channels({name: ratio})
    assert kept[name] == expected
    assert {n: k for n, k in kept.items() if n != name} == {
        g.name: g.channels for g in space.groups if g.name != name
    }


def test_kept_channels_rounding_and_floor():
    config = SpaceConfig(round_to=8, min_channels=8)
    space = PruningSpace(_resnet20(), _example(), config)
    kept = space.kept_channels({"layer3.0.conv1": 0.3, "layer2.0.conv1": 0.9, "conv1": 0.7})
    assert kept["layer3.0.conv1"] == 48
    assert kept["layer2.0.conv1"] == 8
    assert kept["conv1"] == 8


def test_unknown_group_is_a_key_error(resnet):
    _, space = resnet
    for method in (space.kept_channels, space.cost, space.kept_indices, space.prune):
        with pytest.raises(KeyError, match="nope"):
            method({"nope": 0.5})


def test_unknown_criterion(resnet):
    model, _ = resnet
    with pytest.raises(UserError, match="unknown criterion"):
        PruningSpace(model, _example(), criterion="nosuch")


def test_example_input_the_model_cannot_take():
    with pytest.raises(UserError, match="does not run"):
        PruningSpace(_resnet20(), torch.randn(1, 3, 28, 28))


@pytest.fixture(scope="module", params=["resnet20", "mobilenet_v2", "vgg11_bn"])
def pruned(request):
    torch.manual_seed(0)
    model = create_model(request.param, in_channels=1, num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    space = PruningSpace(model, _example())
    ratios = _grid_ratios(space, seed=0)
    subnet, kept = space.prune(ratios)
    return SimpleNamespace(
        name=request.param,
        model=model,
        state=state,
        space=space,
        ratios=ratios,
        subnet=subnet,
        kept=kept,
    )


def test_pruned_roots_have_the_kept_widths(pruned):
    modules = dict(pruned.subnet.named_modules())
    widths = {name: modules[name].out_channels for name in pruned.space.group_names}
    assert widths == pruned.space.kept_channels(pruned.ratios)
    assert any(w < g.channels for w, g in zip(widths.values(), pruned.space.groups))


def test_original_model_is_untouched(pruned):
    modules = dict(pruned.model.named_modules())
    for g in pruned.space.groups:
        assert modules[g.name].out_channels == g.channels
    assert _param_count(pruned.model) == pruned.space.base_cost.params
    state = pruned.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pruned.state.items())


def test_kept_indices_have_the_asked_length(pruned):
    widths = pruned.space.kept_channels(pruned.ratios)
    assert pruned.kept == pruned.space.kept_indices(pruned.ratios)
    for g in pruned.space.groups:
        idx = pruned.kept[g.name]
        assert len(idx) == widths[g.name]
        assert idx == sorted(set(idx))
        assert 0 <= idx[0] and idx[-1] < g.channels


def test_pruned_model_runs(pruned):
    with torch.no_grad():
        out = pruned.subnet.eval()(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_cost_model_is_exact(pruned):
    """README: the analytic count is exact. Equal to the independent count of the pruned subnet, and
    analytic (a wrong analytic model would switch the space to tracing, and ``cost`` alone would hide it)."""
    cost = pruned.space.cost(pruned.ratios)
    assert pruned.space.cost_check["mode"] == "analytic" and pruned.space.cost_check["max_relative_error"] == 0
    assert cost.params == _param_count(pruned.subnet)
    assert cost.macs == _counted_macs(pruned.subnet, _example())
    assert cost == count_cost(pruned.subnet, _example())
    assert cost.macs < pruned.space.base_cost.macs
    assert cost.params < pruned.space.base_cost.params


def test_apply_kept_rebuilds_the_subnet(pruned):
    fresh = create_model(pruned.name, in_channels=1, num_classes=10)
    apply_kept(fresh, _example(), pruned.kept)
    fresh.load_state_dict(pruned.subnet.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned.subnet.eval()(x))


def test_apply_kept_checks_the_model(pruned):
    fresh = create_model(pruned.name, in_channels=1, num_classes=10)
    with pytest.raises(KeyError):
        apply_kept(fresh, _example(), {"no.such.layer": [0]})
    name = pruned.space.group_names[0]
    with pytest.raises(ValueError, match="channels, expected"):
        apply_kept(fresh, _example(), {name: [0]}, {name: 3})


def test_kept_sets_nest_as_ratios_grow(pruned):
    """One ranking per group: the channels kept at a larger ratio are among those kept at a smaller one."""
    space = pruned.space
    previous = space.kept_indices({})
    for fraction in (0.25, 0.5, 0.75, 1.0):
        kept = space.kept_indices({name: ratio * fraction for name, ratio in pruned.ratios.items()})
        assert all(set(kept[name]) <= set(previous[name]) for name in kept)
        previous = kept
    assert previous == pruned.kept


def test_pruning_further_is_pruning_at_once(pruned):
    """Pruning a subnet again, by indices of the unpruned model, lands on the subnet that pruning at once
    makes, weight for weight."""
    space = pruned.space
    subnet, current = space.prune({name: ratio / 2 for name, ratio in pruned.ratios.items()})
    space.prune_further(subnet, current, pruned.kept)
    once = pruned.subnet.state_dict()
    assert subnet.state_dict().keys() == once.keys()
    assert all(torch.equal(value, once[key]) for key, value in subnet.state_dict().items())
    with pytest.raises(ValueError, match="not in the subnet"):
        space.prune_further(subnet, pruned.kept, space.kept_indices({}))


def test_pruning_other_weights_keeps_the_same_channels(pruned):
    """``weights=`` (an initialisation, say) is pruned at the indices the trained model's ranking chose."""
    torch.manual_seed(1)
    other = create_model(pruned.name, in_channels=1, num_classes=10)
    subnet, kept = pruned.space.prune(pruned.ratios, other.state_dict())
    assert kept == pruned.kept
    apply_kept(other, _example(), kept)
    assert all(torch.equal(value, other.state_dict()[key]) for key, value in subnet.state_dict().items())


def _ones_model(zero_layer, zero_channel):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.fill_(1.0)
        model[zero_layer].weight[zero_channel] = 0.0
    return model


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("layer, channel", [(0, 5), (3, 2)])
def test_zeroed_channel_is_pruned_first(criterion, layer, channel):
    model = _ones_model(layer, channel)
    space = PruningSpace(model, torch.randn(1, 1, 12, 12), criterion=criterion)
    assert sorted(space.group_names) == ["0", "3"]
    name = str(layer)
    kept = space.kept_indices({name: 1 / 8})[name]
    assert kept == [c for c in range(8) if c != channel]
    subnet, _ = space.prune({name: 1 / 8})
    assert subnet[layer].out_channels == 7


@pytest.mark.parametrize("criterion", ["l1", "bn_scale"])
def test_reranking_on_new_weights_is_building_on_them(criterion):
    model = _ones_model(0, 5)
    space = PruningSpace(model, torch.randn(1, 1, 12, 12), criterion=criterion)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.mul_(torch.arange(1.0, 9.0).view(8, 1, 1, 1).flip(0))
        other[1].weight.copy_(torch.arange(1.0, 9.0).flip(0))
        other[4].weight.copy_(torch.arange(1.0, 9.0).flip(0))
    fresh = PruningSpace(other, torch.randn(1, 1, 12, 12), criterion=criterion)
    before = space.orders
    space.rerank(other)
    assert space.orders == fresh.orders != before
    assert [g.importance for g in space.groups] == [g.importance for g in fresh.groups]
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in space.model.state_dict().items())
    assert space.base_cost == fresh.base_cost


def test_shipped_resnet_space():
    config = load_space_config(None, "resnet")
    assert config.source == "search_spaces/resnet.yaml"
    assert (config.ratio_min, config.ratio_max, config.step) == (0.0, 0.7, 0.05)
    assert (config.round_to, config.min_channels) == (1, 2)
    assert config.skip == []
    assert config.bounds_for("conv1") == (0.0, 0.5)
    assert config.bounds_for("layer1.0.conv1") == (0.0, 0.7)


def test_shipped_rounded_resnet_space_keeps_multiples_of_8():
    path = Path(autoprune.__file__).parent / "search_spaces" / "resnet-round8.yaml"
    config, plain = load_space_config(path, None), load_space_config(None, "resnet")
    assert config.round_to == 8 and config.to_dict() == {**plain.to_dict(), "round_to": 8, "source": config.source}
    model = create_model("resnet20", in_channels=1, num_classes=10).eval()
    space = PruningSpace(model, torch.randn(1, 1, 28, 28), config)
    for ratio in (0.1, 0.33, 0.5):
        assert all(k % 8 == 0 for k in space.kept_channels(space.uniform_ratios(ratio)).values())


def test_a_shipped_space_is_chosen_by_name(tmp_path, monkeypatch):
    path = Path(autoprune.__file__).parent / "search_spaces" / "resnet-round8.yaml"
    monkeypatch.chdir(tmp_path)  # wherever the user runs it, as pip installed it
    named = load_space_config("resnet-round8", "vgg")
    assert named.source == "search_spaces/resnet-round8.yaml"
    assert named.to_dict() == {**load_space_config(path, None).to_dict(), "source": named.source}
    # a file of that name in the working directory is the user's own, and wins
    Path("resnet-round8").write_text("round_to: 4\n")
    assert load_space_config("resnet-round8", None).round_to == 4
    with pytest.raises(UserError, match=r"nosuch not found \(a YAML file, or a shipped space: default, mobilenet, "
                                        r"resnet, resnet-round8, vgg\)"):
        load_space_config("nosuch", None)


@pytest.mark.parametrize("family", [None, "transformer"])
def test_default_space_for_other_families(family):
    config = load_space_config(None, family)
    assert config.source == "search_spaces/default.yaml"
    assert config.to_dict() == {**SpaceConfig().to_dict(), "source": "search_spaces/default.yaml"}


def _yaml(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("ratio: {max: 0.5}\nprune_bias: true\n", "unknown keys \\['prune_bias'\\]"),
        ("ratio: {max: 1.0}\n", "ratio.max < 1"),
        ("ratio: {min: 0.6, max: 0.5}\n", "ratio.min <= ratio.max"),
        ("ratio: {step: 0}\n", "step"),
        ("round_to: 0\n", "round_to"),
        ("ratio: {max: lots}\n", "space.yaml"),
        ("- a list\n", "mapping"),
        ("ratio: {max: [0.5\n", "not valid YAML"),
    ],
)
def test_bad_user_space(tmp_path, text, fragment):
    with pytest.raises(UserError, match=fragment):
        load_space_config(_yaml(tmp_path, text), "resnet")


def test_missing_user_space(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_space_config(tmp_path / "absent.yaml", None)


def test_user_space_skips_and_overrides_groups(tmp_path, resnet):
    path = _yaml(
        tmp_path,
        'ratio: {max: 0.6}\nskip: ["layer1.*"]\noverrides:\n  - {match: "layer3.*", max: 0.4}\n',
    )
    config = load_space_config(path, "resnet")
    assert config.source == str(path)
    space = PruningSpace(_resnet20(), _example(), config)
    assert space.group_names == [n for n in resnet[1].group_names if not n.startswith("layer1.")]
    assert len(space.group_names) == 9
    assert {g.name: g.high for g in space.groups if g.high != 0.6} == {
        n: 0.4 for n in space.group_names if n.startswith("layer3.")
    }


def test_skipping_everything(tmp_path):
    with pytest.raises(UserError, match="no prunable groups"):
        PruningSpace(_resnet20(), _example(), SpaceConfig(skip=["*"]))


def test_groups_touching_a_grouped_conv_keep_its_groups_even():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.c = nn.Conv2d(8, 16, 1)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.c(self.b(self.a(x))).mean((2, 3)))

    model, x = Grouped(), torch.randn(1, 3, 8, 8)
    space = PruningSpace(model, x)
    assert space.group_names == ["c", "b", "a"]
    assert [g.step for g in space.groups] == [1, 2, 2]
    assert space.groups[2].rules == ["grouped convolution 'b' has 2 groups"]
    assert space.unprunable == {"fc": "the classifier: its outputs are the classes"}
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert space.base_cost.macs == counter.get_total_flops() // 2
    ratios = {"a": 0.3, "b": 0.6, "c": 0.5}
    assert space.kept_channels(ratios) == {"a": 6, "b": 4, "c": 8}
    subnet, kept = space.prune(ratios)
    # one channel cut from each half of 'a' (the two groups of 'b' read 3 inputs each) and of 'b'
    assert sum(i < 4 for i in kept["a"]) == 3 and sum(i < 4 for i in kept["b"]) == 2
    assert (subnet.b.in_channels, subnet.b.out_channels, subnet.b.groups) == (6, 4, 2)
    assert subnet(x).shape == (1, 3)
    with FlopCounterMode(display=False) as counter:
        subnet(x)
    assert space.cost(ratios) == Cost(counter.get_total_flops() // 2, sum(p.numel() for p in subnet.parameters()))
