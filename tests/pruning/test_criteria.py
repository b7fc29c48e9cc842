"""Each criterion must rank a channel planted for it least important; data-driven ones leave the model as it was."""

import pytest
import torch
from torch import nn

from autoprune.data import Split
from autoprune.errors import UserError
from autoprune.models import create_model
from autoprune.pruning.criteria import (
    CriterionContext,
    criterion_batches,
    describe_criteria,
    get_criterion,
    list_criteria,
    needs_data,
)
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")

PLANTED = 5  # not channel 0: a criterion that scores every channel alike would rank channel 0 first
DATA_DRIVEN = ["apoz", "entropy", "pfp", "taylor"]


def _chain():
    """conv(0) -> BN(1) -> ReLU -> conv(3) -> BN(4) -> ReLU -> pool -> linear(8): group "0" is read by a conv,
    group "3" by the linear layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def _batches(count=2, size=16, shape=(1, 10, 10), classes=3):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, *shape, generator=generator), torch.randint(0, classes, (size,), generator=generator))
            for _ in range(count)]


def _reader(model, group):
    return model[3] if group == 0 else model[8]


def _weak(model, group):
    """Every weight of the channel 100 times smaller: its filter, its BN scale, what the next layer reads."""
    conv, bn, reader = model[group], model[group + 1], _reader(model, group)
    conv.weight[PLANTED] *= 0.01
    bn.weight[PLANTED] = 0.01
    reader.weight[:, PLANTED] *= 0.01


def _median(model, group):
    """The channel's weights (as FPGM sees them, squared) at the centre of the other channels' weights."""
    others = [c for c in range(8) if c != PLANTED]
    conv, reader = model[group], _reader(model, group)
    conv.weight[PLANTED] = conv.weight[others].pow(2).mean(0).sqrt()
    reader.weight[:, PLANTED] = reader.weight[:, others].pow(2).mean(1).sqrt()


def _small_gamma(model, group):
    """A tiny BN scale behind a filter ten times larger than the others: only the scale says prune."""
    model[group].weight[PLANTED] *= 10
    model[group + 1].weight[PLANTED] = 0.01


def _dead(model, group):
    """A BN shift that keeps the channel below zero: the ReLU after it outputs zeros only."""
    model[group].weight[PLANTED] *= 10
    model[group + 1].bias[PLANTED] = -100.0


def _constant(model, group):
    """No filter, a positive BN shift: the channel outputs 1 for every image (and no zeros)."""
    model[group].weight[PLANTED] = 0.0
    model[group + 1].bias[PLANTED] = 1.0


def _unread(model, group):
    """A loud channel the next layer ignores: its outgoing weights are zero, its filter ten times larger."""
    model[group].weight[PLANTED] *= 10
    _reader(model, group).weight[:, PLANTED] = 0.0


PLANTS = {"l1": _weak, "l2": _weak, "fpgm": _median, "bn_scale": _small_gamma, "apoz": _dead, "entropy": _constant,
          "taylor": _unread, "pfp": _unread}


def test_the_registry_lists_every_criterion_with_its_help():
    assert list_criteria() == ["apoz", "bn_scale", "entropy", "fpgm", "l1", "l2", "pfp", "random", "taylor"]
    assert list(describe_criteria()) == list_criteria()
    assert describe_criteria()["l1"] == "sum of absolute weights over the group (Li et al. 2017)"


def test_an_unknown_criterion_lists_the_criteria():
    choices = "apoz, bn_scale, entropy, fpgm, l1, l2, pfp, random, taylor"
    with pytest.raises(UserError) as err:
        needs_data("l3")
    assert str(err.value) == f"unknown criterion 'l3' (choose from {choices})"
    with pytest.raises(UserError, match="unknown criterion 'l3'"):
        get_criterion("l3", CriterionContext(_chain()))


def test_every_criterion_has_a_planted_channel():
    assert sorted(PLANTS) == sorted(c for c in list_criteria() if c != "random")
    assert sorted(c for c in list_criteria() if needs_data(c)) == DATA_DRIVEN


@pytest.mark.parametrize("group", [0, 3])
@pytest.mark.parametrize("criterion", sorted(PLANTS))
def test_planted_channel_is_ranked_least_important(criterion, group):
    model = _chain()
    with torch.no_grad():
        PLANTS[criterion](model, group)
    space = PruningSpace(model, torch.randn(1, 1, 10, 10), criterion=criterion, batches=_batches())
    assert space.orders[str(group)][0] == PLANTED
    assert space.kept_indices({str(group): 1 / 8})[str(group)] == [c for c in range(8) if c != PLANTED]


@pytest.mark.parametrize("criterion", DATA_DRIVEN)
def test_data_driven_criteria_need_batches(criterion):
    with pytest.raises(UserError, match=f"criterion '{criterion}' ranks channels on training batches"):
        PruningSpace(_chain(), torch.randn(1, 1, 10, 10), criterion=criterion)


def test_weight_criteria_need_no_batches():
    for criterion in ("l1", "l2", "fpgm", "random", "bn_scale"):
        assert len(PruningSpace(_chain(), torch.randn(1, 1, 10, 10), criterion=criterion).groups) == 2


def _resnet20():
    torch.manual_seed(0)
    return create_model("resnet20", in_channels=1, num_classes=10)


def test_dead_residual_stream_channel_is_ranked_first():
    """A stream channel zero after every block's add and ReLU: every layer reading the stream sees zeros."""
    model = _resnet20().eval()
    with torch.no_grad():
        model.bn1.bias[PLANTED] = -100.0
        for block in model.layer1:
            block.bn2.bias[PLANTED] = -100.0
    batches = _batches(count=1, size=8, shape=(1, 28, 28), classes=10)
    space = PruningSpace(model, torch.randn(1, 1, 28, 28), criterion="apoz", batches=batches)
    assert space.orders["conv1"][0] == PLANTED


@pytest.mark.parametrize("criterion", [*DATA_DRIVEN, "bn_scale"])
def test_ranking_leaves_the_model_as_it_was(criterion):
    model = _resnet20().eval()
    model.layer2[0].conv1.weight.requires_grad_(False)  # a frozen layer stays frozen, and taylor still sees it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    batches = _batches(count=1, size=8, shape=(1, 28, 28), classes=10)
    space = PruningSpace(model, torch.randn(1, 1, 28, 28), criterion=criterion, batches=batches)
    after = space.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # weights and BN running statistics
    assert {name: p.requires_grad for name, p in space.model.named_parameters()} == frozen
    assert all(p.grad is None for p in space.model.parameters())
    assert not any(m.training for m in space.model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in space.model.modules())
    for name, order in space.orders.items():
        assert sorted(order) == list(range(len(order))), name


def test_orders_rebuild_the_space_without_the_criterion():
    model, x = _chain(), torch.randn(1, 1, 10, 10)
    ranked = PruningSpace(model, x, criterion="taylor", batches=_batches())
    assert ranked.orders != PruningSpace(model, x).orders  # else the round trip below would prove nothing
    rebuilt = PruningSpace(model, x, criterion="taylor", orders=ranked.orders)  # no batches: taylor is not run
    assert rebuilt.orders == ranked.orders
    ratios = {"0": 0.5, "3": 0.25}
    assert rebuilt.kept_indices(ratios) == ranked.kept_indices(ratios)
    subnet, _ = rebuilt.prune(ratios)
    reference, _ = ranked.prune(ratios)
    assert all(torch.equal(a, b) for a, b in zip(subnet.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize(
    "orders, fragment",
    [
        ({"0": list(range(8)), "3": [0] * 8}, "does not rank each of its 8 channels once"),
        ({"0": list(range(8)), "3": list(range(8)), "9": [0]}, r"orders given for group\(s\) \['9'\]"),
    ],
)
def test_bad_orders(orders, fragment):
    with pytest.raises(ValueError, match=fragment):
        PruningSpace(_chain(), torch.randn(1, 1, 10, 10), orders=orders)


def test_a_group_without_an_order_was_left_out_by_the_space_that_ranked():
    space = PruningSpace(_chain(), torch.randn(1, 1, 10, 10), orders={"0": list(range(8))})
    assert space.group_names == ["0"]
    assert space.unprunable["3"] == "left out by the space that ranked the channels"


def test_criterion_batches_are_a_fixed_draw_of_the_training_split():
    train = Split(torch.arange(100.0).reshape(100, 1, 1, 1), torch.arange(100))
    batches = criterion_batches(train, 3, 16, seed=0)
    assert [len(y) for _, y in batches] == [16, 16, 16]
    images = torch.cat([y for _, y in batches])
    assert len(set(images.tolist())) == 48
    assert all(torch.equal(x.flatten().long(), y) for x, y in batches)  # images keep their labels
    assert torch.equal(images, torch.cat([y for _, y in criterion_batches(train, 3, 16, seed=0)]))
    assert not torch.equal(images, torch.cat([y for _, y in criterion_batches(train, 3, 16, seed=1)]))
