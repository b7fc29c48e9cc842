"""Network slimming's sparsity training and PFP's allocation, end to end through the command line."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from autoprune import workbench
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.data import load_data
from autoprune.finetuning import finetune, finetune_candidate
from autoprune.models import create_model, load_weights
from autoprune.train import train
from autoprune.workbench import load_workbench, make_evaluator

pytestmark = pytest.mark.usefixtures("one_thread")


def _scales(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_sparsity_training_adds_the_l1_subgradient_to_the_bn_scales_only(tiny_npz, tiny_weights):
    data = load_data(tiny_npz, holdout=120, seed=0)
    model = create_model("resnet20", in_channels=1, num_classes=data.num_classes)
    load_weights(model, tiny_weights)
    plain, slim = copy.deepcopy(model), copy.deepcopy(model)
    lr, momentum, lam = 0.05, 0.9, 0.01
    for m, bn_l1 in ((plain, 0.0), (slim, lam)):  # one step each, on the same batch
        assert train(m, data, epochs=1e-3, lr=lr, momentum=momentum, batch_size=64, seed=3, quiet=True,
                     bn_l1=bn_l1).steps == 1
    before, after_plain, after_slim = _scales(model), _scales(plain), _scales(slim)
    for name, gamma in before.items():
        # Nesterov's first step moves a parameter by lr * (1 + momentum) * its gradient
        expected = lr * (1 + momentum) * lam * torch.sign(gamma)
        torch.testing.assert_close(after_plain[name] - after_slim[name], expected, rtol=1e-4, atol=1e-6)
    scales = {f"{name}.weight" for name in before}
    for key, value in plain.state_dict().items():
        if key not in scales and value.is_floating_point():
            torch.testing.assert_close(slim.state_dict()[key], value, msg=key)


def test_search_after_sparsity_training(tmp_path, tiny_search_args, tiny_weights, monkeypatch):
    run = tmp_path / "run"
    args = tiny_search_args + ["--sparsity-train", "1", "--sparsity-lambda", "2", "--criterion", "bn_scale",
                          "--trials", "2", "--finetune-top", "0", "--out", str(run)]
    assert main(args) == 0
    saved = run / "sparsity_trained.pt"
    assert saved.is_file()
    base = create_model("resnet20", in_channels=1, num_classes=4)
    load_weights(base, tiny_weights)
    slim = copy.deepcopy(base)
    load_weights(slim, saved)
    l1 = {name: sum(float(g.abs().sum()) for g in _scales(m).values()) for name, m in (("base", base), ("slim", slim))}
    assert l1["slim"] < 0.9 * l1["base"], l1
    # a resumed run reads the trained weights back instead of training again
    monkeypatch.setattr(workbench, "train", lambda *a, **k: pytest.fail("sparsity training ran again"))
    assert main(_with(args, "--trials", "3") + ["--resume"]) == 0
    assert len(pd.read_csv(run / "trials.csv")) == 3


def _with(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def test_search_with_pfp_allocation(tmp_path, tiny_search_args):
    run = tmp_path / "run"
    assert main(tiny_search_args + ["--strategy", "pfp", "--criterion", "pfp", "--trials", "3", "--finetune-top", "1",
                               "--finetune-epochs", "0.1", "--out", str(run)]) == 0
    trials = pd.read_csv(run / "trials.csv")
    assert trials["state"].isin(["complete", "stopped"]).all()  # each within the budget, and scored
    assert list(Path(run, "subnets").iterdir())


# --- unstructured weight pruning -----------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_bench(tiny_npz, tiny_weights):
    config = SearchConfig(model="resnet20", data=tiny_npz, weights=tiny_weights, holdout=120, batch_size=64,
                                   calib_batches=2, score_images=120, finetune_epochs=0.3, granularity="weight",
                                   mask_scope="global")
    data, _, space = load_workbench(config)
    return config, data, space, make_evaluator(config, data)


def test_fine_tuning_keeps_the_zeros_of_a_weight_pruned_subnet(weight_bench):
    from autoprune.pruning.weights import weight_masks

    config, data, space, evaluator = weight_bench
    subnet, _ = space.prune(space.uniform_ratios(0.6))
    masks = weight_masks(subnet)
    before = {k: v.clone() for k, v in subnet.state_dict().items()}
    unmasked = copy.deepcopy(subnet)
    finetune(subnet, config, data, evaluator, seed=1, quiet=True)
    for name, mask in masks.items():
        weight = subnet.state_dict()[name]
        assert torch.equal(weight != 0, mask), name  # not one zero moved, not one kept weight became zero
        assert not torch.equal(weight, before[name])  # and the kept ones did train
    train(unmasked, data, epochs=0.3, lr=config.finetune_lr, batch_size=64, quiet=True)  # the control
    assert any(not torch.equal(unmasked.state_dict()[k] != 0, m) for k, m in masks.items())


def test_scratch_training_of_a_weight_pruned_subnet_keeps_its_mask(weight_bench):
    from dataclasses import replace

    from autoprune.pruning.weights import weight_masks

    config, data, space, evaluator = weight_bench
    ratios = space.uniform_ratios(0.5)
    done = finetune_candidate(space, evaluator, replace(config, rewind="scratch-e"), data, ratios, seed=4)
    pruned, _ = space.prune(ratios)
    expected = weight_masks(pruned)
    got = weight_masks(done.subnet)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_search_with_weight_pruning(tmp_path, tiny_search_args, scope):
    from autoprune.pruning.weights import weight_masks
    from autoprune.results import load_subnet

    run = tmp_path / "run"
    args = _with(tiny_search_args, "--budget", "40%params") + [
        "--granularity", "weight", "--mask-scope", scope, "--strategy", "random", "--trials", "3",
        "--finetune-top", "1", "--finetune-epochs", "0.2", "--out", str(run)]
    assert main(args) == 0
    (directory,) = Path(run, "subnets").iterdir()
    spec = __import__("json").loads((directory / "spec.json").read_text())
    assert (spec["granularity"], spec["mask_scope"], spec["criterion"]) == ("weight", scope, "magnitude")
    subnet = load_subnet(directory)
    masks = torch.load(directory / "masks.pt", weights_only=True)
    assert masks.keys() == weight_masks(subnet).keys()
    assert all(torch.equal(weight_masks(subnet)[k], m) for k, m in masks.items())
    assert sum(int((p != 0).sum()) for p in subnet.parameters()) == spec["params"] <= 0.4 * 272_000


@pytest.mark.parametrize("extra, message", [
    (["--budget", "5ms"], "latency budget does not go with --granularity weight"),
    (["--criterion", "taylor"], "ranks single weights by magnitude"),
    (["--damage", "recon", "--strategy", "binary"], "--damage recon needs --granularity filter"),
])
def test_weight_pruning_refuses_what_does_not_apply(tmp_path, tiny_search_args, capsys, extra, message):
    args = tiny_search_args + ["--granularity", "weight", "--out", str(tmp_path / "run")]
    for flag, value in zip(extra[::2], extra[1::2]):
        args = _with(args, flag, value) if flag in args else args + [flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
