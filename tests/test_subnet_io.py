"""``load_subnet`` gives back the saved subnet ready to run: every module in eval mode, and the same logits
as the module that was saved (bit for bit), whether it was saved in train mode (as fine-tuning leaves it),
rebuilt from the spec's model name or from a base model handed over in train mode, channel- or
weight-pruned."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autoprune.models import create_model
from autoprune.pruning.space import PruningSpace
from autoprune.results import SubnetSpec, load_subnet

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 28, 28)


def _batch(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _train_steps(model: nn.Module) -> None:
    """A few train-mode passes: BatchNorm's running statistics move away from their initial values, so
    that the same input gives other logits in train and in eval mode."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_batch(100 + seed, 8) * 3 + 1)


def _spec(subnet_spec, space: PruningSpace, kept: dict, *, model: str | None,
          granularity: str = "filter") -> SubnetSpec:
    return subnet_spec(model=model, in_channels=1, num_classes=10, input_shape=list(SHAPE), granularity=granularity,
                       channels={g.name: g.channels for g in space.groups}, kept=kept)


def _eval_logits(model: nn.Module) -> torch.Tensor:
    """Logits of ``model`` in eval mode, leaving its mode as it was."""
    training = model.training
    with torch.no_grad():
        out = model.eval()(_batch(0))
    model.train(training)
    return out


def _assert_eval(model: nn.Module) -> None:
    assert not model.training
    assert not any(m.training for m in model.modules())


@pytest.fixture(scope="module")
def resnet_space():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    return model, PruningSpace(model, torch.zeros(1, *SHAPE))


@pytest.mark.parametrize("from_spec", [True, False], ids=["model-from-spec", "base-model-given"])
def test_a_loaded_filter_pruned_subnet_is_in_eval_mode_with_the_saved_logits(tmp_path, resnet_space, from_spec,
                                                                              subnet_spec):
    model, space = resnet_space
    subnet, kept = space.prune(space.uniform_ratios(0.4))
    _train_steps(subnet)  # saved in train mode, as fine-tuning leaves it
    assert subnet.training
    expected = _eval_logits(subnet)
    _spec(subnet_spec, space, kept, model="resnet20" if from_spec else None).save(tmp_path, subnet)

    base = None if from_spec else copy.deepcopy(model).train()
    loaded = load_subnet(tmp_path, base_model=base)
    _assert_eval(loaded)
    with torch.no_grad():
        logits = loaded(_batch(0))
    assert torch.equal(logits, expected)
    saved = subnet.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    # the logits of a train-mode pass differ: equality above means eval mode, not luck
    with torch.no_grad():
        assert not torch.equal(loaded.train()(_batch(0)), expected)


def test_a_loaded_weight_pruned_subnet_is_in_eval_mode_with_the_saved_logits(tmp_path, resnet_space, subnet_spec):
    """A weight-pruned subnet keeps the dense architecture: nothing is pruned on load, so nothing on the way
    puts the model in eval mode but ``load_subnet`` itself."""
    _, space = resnet_space
    torch.manual_seed(1)
    subnet = create_model("resnet20", in_channels=1, num_classes=10)
    with torch.no_grad():
        for m in subnet.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    _train_steps(subnet)
    expected = _eval_logits(subnet)
    _spec(subnet_spec, space, {}, model="resnet20", granularity="weight").save(tmp_path, subnet)

    loaded = load_subnet(tmp_path / "spec.json")
    _assert_eval(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(_batch(0)), expected)


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


def test_a_loaded_subnet_with_dropout_runs_deterministically(tmp_path, subnet_spec):
    torch.manual_seed(0)
    base = _WithDropout()
    space = PruningSpace(base, torch.zeros(1, *SHAPE))
    subnet, kept = space.prune({"conv": 0.5})
    _train_steps(subnet)
    expected = _eval_logits(subnet)
    _spec(subnet_spec, space, kept, model=None).save(tmp_path, subnet)

    loaded = load_subnet(tmp_path, base_model=base.train())
    _assert_eval(loaded)
    assert loaded.conv.out_channels == 4
    with torch.no_grad():
        first, second = loaded(_batch(0)), loaded(_batch(0))
    assert torch.equal(first, expected) and torch.equal(second, expected)
