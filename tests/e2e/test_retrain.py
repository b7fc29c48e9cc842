"""Retraining the chosen subnets: lottery rewinding, from scratch, iterative pruning, distillation."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.data import load_data
from autoprune.finetuning import finetune_candidate
from autoprune.models import create_model
from autoprune.retrain import (
    retrain,
    retrain_epochs,
    rewind_weights_path,
    schedule_ratios,
    starting_subnet,
)
from autoprune.train import TrainResult, distillation_loss, train
from autoprune.workbench import load_workbench, make_evaluator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ticket(tiny_npz, tmp_path_factory) -> Path:
    """A baseline trained for two epochs that kept its initialisation and its weights after epoch 1."""
    out = tmp_path_factory.mktemp("ticket") / "resnet20.pt"
    assert main(["train", "--model", "resnet20", "--data", tiny_npz, "--epochs", "2", "--holdout", "120",
                 "--batch-size", "64", "--save-init", "--save-init-epoch", "1", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def bench(tiny_npz, ticket):
    config = SearchConfig(model="resnet20", data=tiny_npz, weights=str(ticket), holdout=120, batch_size=64,
                          calib_batches=2, score_images=120, finetune_epochs=0.2)
    data, _, space = load_workbench(config)
    ratios = {g.name: (0.2, 0.3, 0.5)[i % 3] for i, g in enumerate(space.groups)}
    return config, data, space, make_evaluator(config, data), ratios


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_train_saves_the_rewind_points(ticket, tiny_npz, tmp_path):
    torch.manual_seed(0)  # what `autoprune train --seed 0` does before it builds the model
    data = load_data(tiny_npz, holdout=120, seed=0)
    untrained = create_model("resnet20", in_channels=data.in_channels, num_classes=data.num_classes).state_dict()
    init = torch.load(rewind_weights_path(ticket), weights_only=True)
    after_one = torch.load(rewind_weights_path(ticket, 1), weights_only=True)
    final = torch.load(ticket, weights_only=True)
    assert rewind_weights_path(ticket).name == "resnet20.init.pt"
    assert rewind_weights_path(ticket, 1).name == "resnet20.epoch1.pt"
    assert _equal_states(init, untrained)
    assert not torch.equal(after_one["conv1.weight"], init["conv1.weight"])
    assert not torch.equal(after_one["conv1.weight"], final["conv1.weight"])
    meta = json.loads(ticket.with_suffix(".json").read_text())
    assert meta["rewind_points"] == [str(rewind_weights_path(ticket)), str(rewind_weights_path(ticket, 1))]

    # the snapshot is the state at the end of its epoch: for the last epoch, the weights the training ends with
    out = tmp_path / "short.pt"
    assert main(["train", "--model", "resnet20", "--data", tiny_npz, "--epochs", "1", "--limit-train", "128",
                 "--holdout", "120", "--batch-size", "64", "--save-init-epoch", "1", "--out", str(out), "--quiet"]) == 0
    assert _equal_states(torch.load(rewind_weights_path(out, 1), weights_only=True), torch.load(out, weights_only=True))
    assert not rewind_weights_path(out).exists()


def _at_kept(state: dict, space, kept: dict, key: str) -> torch.Tensor:
    """Entry ``key`` of an unpruned state dict cut to the kept channels: rows where its layer writes a
    group's channels, columns where it reads them."""
    module = key.rpartition(".")[0]
    tensor = state[key]
    if tensor.dim() == 0:
        return tensor
    for group in space.describe():
        index = torch.tensor(kept[group["name"]])
        if module in group["members"]:
            tensor = tensor.index_select(0, index)
        if module in space.readers(group["name"]) and tensor.dim() > 1:  # weights, not a reader's bias
            tensor = tensor.index_select(1, index)
    return tensor


@pytest.mark.parametrize("epoch", [None, 1])
def test_lottery_rewind_restores_the_saved_values(bench, ticket, epoch):
    config, _, space, _, ratios = bench
    saved = torch.load(rewind_weights_path(ticket, epoch), weights_only=True)
    subnet, kept = starting_subnet(space, ratios, replace(config, rewind="lottery", rewind_epoch=epoch), seed=1)
    assert kept == space.kept_indices(ratios)
    state = subnet.state_dict()
    for key, value in state.items():
        if "running_" in key or "num_batches" in key:
            continue  # reset: the statistics of the rewound weights are not known
        assert torch.equal(value, _at_kept(saved, space, kept, key)), key
    bns = [m for m in subnet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) for bn in bns)
    assert all(torch.equal(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)
    trained, _ = space.prune(ratios)
    rewound_convs, trained_convs = _conv_weights(subnet), _conv_weights(trained)
    assert all(not torch.equal(rewound_convs[name], trained_convs[name]) for name in trained_convs)


def test_scratch_reinitialises_seeded_without_touching_the_global_rng(bench):
    config, _, space, _, ratios = bench
    rng = torch.get_rng_state()
    first, kept = starting_subnet(space, ratios, replace(config, rewind="scratch-e"), seed=3)
    again, _ = starting_subnet(space, ratios, replace(config, rewind="scratch-b"), seed=3)
    other, _ = starting_subnet(space, ratios, replace(config, rewind="scratch-e"), seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert kept == space.kept_indices(ratios)
    assert _equal_states(first.state_dict(), again.state_dict())
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    trained, _ = space.prune(ratios)
    rewound, _ = starting_subnet(space, ratios, replace(config, rewind="lottery"), seed=3)
    fresh = _conv_weights(first)
    for reference in (trained, rewound):
        assert all(not torch.equal(fresh[name], w) for name, w in _conv_weights(reference).items())
    bn = first.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_scratch_b_trains_for_the_compute_of_the_unpruned_model(bench):
    config, data, space, evaluator, ratios = bench
    scaled = config.finetune_epochs * space.base_cost.macs / space.cost(ratios).macs
    assert retrain_epochs(space, ratios, "scratch-b", config.finetune_epochs) == pytest.approx(scaled)
    assert retrain_epochs(space, ratios, "scratch-e", config.finetune_epochs) == config.finetune_epochs
    assert scaled > 1.5 * config.finetune_epochs
    done = finetune_candidate(space, evaluator, replace(config, rewind="scratch-b"), data, ratios, seed=1)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    assert scaled <= done.epochs < scaled + 1 / steps_per_epoch


def test_distillation_with_weight_zero_is_plain_training(bench):
    _, data, space, _, ratios = bench
    plain, _ = space.prune(ratios)
    distilled = copy.deepcopy(plain)
    train(plain, data, epochs=0.3, lr=0.05, batch_size=64, seed=2, quiet=True)
    train(distilled, data, epochs=0.3, lr=0.05, batch_size=64, seed=2, quiet=True,
          teacher=copy.deepcopy(space.model), distill_weight=0.0)
    assert _equal_states(plain.state_dict(), distilled.state_dict())


def test_distillation_from_an_identical_teacher_has_no_soft_loss(tiny_npz):
    data = load_data(tiny_npz, holdout=120, seed=0)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, data.num_classes))
    teacher = copy.deepcopy(student)
    result = train(student, data, epochs=1e-3, batch_size=64, quiet=True, teacher=teacher, distill_weight=1.0)
    assert result.steps == 1 and result.final_loss == 0.0
    torch.manual_seed(1)
    other = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, data.num_classes))
    assert train(other, data, epochs=1e-3, batch_size=64, quiet=True, teacher=teacher, distill_weight=1.0).final_loss > 0.01


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    logits, teacher_logits, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    temperature, weight = 3.0, 0.7
    hard = -sum(math.log(torch.softmax(logits[i], 0)[y[i]]) for i in range(5)) / 5
    soft = 0.0
    for i in range(5):
        p = torch.softmax(teacher_logits[i] / temperature, 0)
        q = torch.softmax(logits[i] / temperature, 0)
        soft += float((p * (p / q).log()).sum()) / 5
    expected = (1 - weight) * hard + weight * temperature**2 * soft
    got = distillation_loss(logits, teacher_logits, y, temperature=temperature, weight=weight)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_iterative_schedule_nests_its_steps(bench):
    config, _, space, _, ratios = bench
    steps = schedule_ratios(ratios, 3)
    assert len(steps) == 3 and steps[-1] == ratios
    kept = [space.kept_indices(step) for step in steps]
    for smaller, larger in itertools.pairwise(kept):
        assert all(set(larger[name]) <= set(smaller[name]) for name in ratios)
        assert any(len(larger[name]) < len(smaller[name]) for name in ratios)
    assert kept[-1] == space.kept_indices(ratios)

    seen = []

    def fit(subnet, epochs):  # no training: what each step hands over
        seen.append(({name: m.out_channels for name, m in subnet.named_modules() if name in ratios}, epochs))
        return TrainResult(1, epochs, 0.0, 0.0)

    done = retrain(space, ratios, replace(config, schedule="iterative", steps=3), fit, seed=0)
    assert [widths for widths, _ in seen] == [{name: len(k[name]) for name in ratios} for k in kept]
    assert sum(epochs for _, epochs in seen) == pytest.approx(config.finetune_epochs)
    assert done.kept == space.kept_indices(ratios)


def test_iterative_fine_tune_ends_on_the_one_shot_subnet(bench):
    config, data, space, evaluator, ratios = bench
    config = replace(config, schedule="iterative", steps=3, finetune_epochs=1.0, distill=True)
    done = finetune_candidate(space, evaluator, config, data, ratios, seed=1)
    once, kept = space.prune(ratios)
    assert done.kept == kept
    example = space.example_input
    assert tp.utils.count_ops_and_params(done.subnet, example) == tp.utils.count_ops_and_params(once, example)
    assert sum(p.numel() for p in done.subnet.parameters()) == space.cost(ratios).params
    assert done.epochs == pytest.approx(1.0)  # 3 steps of a third of an epoch (3 of its 9 batches each)
    assert not _equal_states(done.subnet.state_dict(), once.state_dict())


def _swap(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _spec(run: Path) -> dict:
    (path,) = run.glob("subnets/*/spec.json")
    return json.loads(path.read_text())


def test_search_with_a_lottery_rewind(tmp_path, tiny_search_args, ticket):
    run = tmp_path / "run"
    args = _swap(tiny_search_args, "--weights", str(ticket)) + [
        "--rewind", "lottery", "--rewind-epoch", "1", "--trials", "2", "--finetune-top", "1",
        "--finetune-epochs", "0.1", "--distill", "--distill-weight", "0.5", "--out", str(run)]
    assert main(args) == 0
    record = _spec(run)["retrain"]
    assert record == {"rewind": "lottery", "rewind_epoch": 1, "schedule": "oneshot", "steps": 1,
                      "distill": {"temperature": 4.0, "weight": 0.5}, "lr": 0.01,
                      "epochs": round(1 / 9, 4)}  # 0.1 epoch, rounded up to one of the epoch's 9 batches
    assert "lottery (epoch 1) + distillation (T 4, W 0.5)" in (run / "report.md").read_text()


def test_search_with_an_iterative_schedule(tmp_path, tiny_search_args):
    run = tmp_path / "run"
    assert main(tiny_search_args + ["--schedule", "iterative", "--steps", "2", "--distill", "--trials", "2",
                               "--finetune-top", "1", "--finetune-epochs", "0.2", "--out", str(run)]) == 0
    record = _spec(run)["retrain"]
    assert (record["rewind"], record["schedule"], record["steps"]) == ("none", "iterative", 2)
    assert record["distill"] == {"temperature": 4.0, "weight": 0.9}
    assert "iterative in 2 steps + distillation" in (run / "report.md").read_text()
