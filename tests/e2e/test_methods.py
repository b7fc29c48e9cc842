"""Network slimming's sparsity training and PFP's allocation, end to end through the command line."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from autoprune import pipeline
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.models import create_model, load_weights
from autoprune.train import train

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


def test_search_after_sparsity_training(tmp_path, search_args, tiny_weights, monkeypatch):
    run = tmp_path / "run"
    args = search_args + ["--sparsity-train", "1", "--sparsity-lambda", "2", "--criterion", "bn_scale",
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
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("sparsity training ran again"))
    assert main(_with(args, "--trials", "3") + ["--resume"]) == 0
    assert len(pd.read_csv(run / "trials.csv")) == 3


def _with(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def test_search_with_pfp_allocation(tmp_path, search_args):
    run = tmp_path / "run"
    assert main(search_args + ["--strategy", "pfp", "--criterion", "pfp", "--trials", "3", "--finetune-top", "1",
                               "--finetune-epochs", "0.1", "--out", str(run)]) == 0
    trials = pd.read_csv(run / "trials.csv")
    assert list(trials["state"]) == ["complete"] * 3  # each within the budget
    assert list(Path(run, "subnets").iterdir())
