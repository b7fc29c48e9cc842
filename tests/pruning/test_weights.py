"""Unstructured weight pruning: magnitude masks per layer or global, exact sparse costs, nesting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.models import create_model
from autoprune.pruning.weights import GLOBAL, WeightSpace, apply_masks, weight_masks

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    with torch.no_grad():  # trained BN layers have no zero parameters; fresh ones have zero biases
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.1, 0.2)
    return model.eval()


def _example() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28)


@pytest.fixture(scope="module", params=["layer", "global"])
def space(request):
    return WeightSpace(_model(), _example(), scope=request.param)


def _ratios(space, seed):
    rng = np.random.default_rng(seed)
    return {g.name: round(float(rng.choice(np.arange(0.0, g.high + 1e-9, space.config.step))), 6) for g in space.groups}


def _positions(model: nn.Module) -> dict[str, int]:
    """Output positions per image of every conv and linear layer, from a forward pass."""
    out, names = {}, {m: n for n, m in model.named_modules()}

    def record(module, inputs, output) -> None:
        out[names[module]] = output[0, 0].numel() if output.ndim > 2 else 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(_example())
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cost_counts_exactly_the_weights_left_and_their_multiplications(space, seed):
    ratios = _ratios(space, seed)
    subnet, kept = space.prune(ratios)
    cost = space.cost(ratios)
    assert cost.params == sum(int((p != 0).sum()) for p in subnet.parameters())
    zeros = {name: int((m.weight == 0).sum()) for name, m in subnet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    positions = _positions(subnet)
    assert space.base_cost.macs - cost.macs == sum(count * positions[name] for name, count in zeros.items())
    assert sum(kept.values()) == sum(g.channels for g in space.groups) - sum(zeros.values())


def test_the_smallest_weights_go_first(space):
    ratios = space.uniform_ratios(0.6)
    subnet, _ = space.prune(ratios)
    original = dict(space.model.named_modules())
    units = {g.name: g.members for g in space.groups}
    for members in units.values():
        dropped = torch.cat([original[n].weight.abs().flatten()[dict(subnet.named_modules())[n].weight.flatten() == 0]
                             for n in members])
        left = torch.cat([original[n].weight.abs().flatten()[dict(subnet.named_modules())[n].weight.flatten() != 0]
                          for n in members])
        assert dropped.max() <= left.min()  # one threshold per unit: per layer, or over the whole network
        assert len(dropped) == round(0.6 * (len(dropped) + len(left)))
    if space.scope == "global":
        sparsity = [float((m.weight == 0).float().mean()) for m in subnet.modules() if isinstance(m, nn.Conv2d)]
        assert max(sparsity) - min(sparsity) > 0.2  # a global threshold prunes layers unevenly


def test_model_is_untouched_and_other_weights_get_the_same_zeros(space):
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    ratios = _ratios(space, 5)
    subnet, _ = space.prune(ratios)
    assert all(torch.equal(v, space.model.state_dict()[k]) for k, v in before.items())
    init = _model(seed=1).state_dict()
    ticket, _ = space.prune(ratios, init)
    masks = weight_masks(subnet)
    assert weight_masks(ticket).keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(ticket.state_dict()[name] != 0, mask)
        assert torch.equal(ticket.state_dict()[name][mask], init[name][mask])


def test_pruning_further_nests_and_matches_pruning_at_once(space):
    small = {g.name: 0.3 for g in space.groups}
    large = {g.name: 0.7 for g in space.groups}
    subnet, current = space.prune(small)
    first = weight_masks(subnet)
    space.prune_further(subnet, current, space.kept(large))
    at_once, _ = space.prune(large)
    for name, mask in weight_masks(subnet).items():
        assert not (mask & ~first[name]).any()  # nothing comes back
        assert torch.equal(mask, weight_masks(at_once)[name])
    with pytest.raises(ValueError, match="more weights"):
        space.prune_further(subnet, space.kept(large), space.kept(small))


def test_masks_round_trip():
    space = WeightSpace(_model(), _example())
    subnet, _ = space.prune(space.uniform_ratios(0.5))
    masks = weight_masks(subnet)
    assert set(masks) == {f"{name}.weight" for name in space.layers}
    fresh = _model(seed=3)
    apply_masks(fresh, masks)
    assert all(torch.equal(weight_masks(fresh)[k], v) for k, v in masks.items())


def test_global_scope_is_one_unit_and_skips_apply():
    from autoprune.pruning.config import SpaceConfig

    space = WeightSpace(_model(), _example(), SpaceConfig(ratio_max=0.9, skip=["fc", "conv1"]), scope="global")
    assert space.group_names == [GLOBAL] and "fc" not in space.layers and "conv1" not in space.layers
    subnet, _ = space.prune({GLOBAL: 0.9})
    assert not (subnet.fc.weight == 0).any() and not (subnet.conv1.weight == 0).any()


def test_a_ray_worker_rebuilds_the_same_weight_space():
    from autoprune.runners.ray_tune import WorkerBench

    driver = WeightSpace(_model(), _example(), scope="global")
    bench = WorkerBench(driver.model, driver.example_input, driver.config, driver.orders, evaluator=None, threads=1,
                      key="w", mask_scope="global")
    worker, _ = bench.build()
    assert isinstance(worker, WeightSpace) and worker.scope == "global"
    ratios = {GLOBAL: 0.55}
    assert worker.cost(ratios) == driver.cost(ratios)
    assert all(torch.equal(a, b) for a, b in zip(worker.prune(ratios)[0].state_dict().values(),
                                                 driver.prune(ratios)[0].state_dict().values()))
