"""The GPU path: training, scoring and fine-tuning on CUDA, with mixed precision. Skipped without a GPU."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

import autoprune
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.measure import accuracy
from autoprune.models import create_model
from autoprune.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_amp_training_learns_on_cuda(tiny_npz):
    data = load_data(tiny_npz, holdout=120, seed=0)
    model = create_model("resnet20", in_channels=data.in_channels, num_classes=data.num_classes)
    result = train(model, data, epochs=3, lr=0.1, batch_size=64, device="cuda", amp=True, quiet=True)
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    assert result.final_loss == result.final_loss and accuracy(model, data.test, device="cuda") > 0.6


def test_search_on_cuda_with_amp(search_args, tmp_path):
    run = tmp_path / "run"
    assert main(search_args + ["--device", "cuda", "--amp", "--trials", "4", "--finetune-top", "1",
                               "--out", str(run)]) == 0
    trials = pd.read_csv(run / "trials.csv")
    assert trials.loc[trials["proxy_acc"].notna(), "predicted_latency_ms"].between(0, math.inf).all()
    (spec_path,) = run.glob("subnets/*/spec.json")
    spec = json.loads(spec_path.read_text())
    assert spec["device"] == "cuda" and 0 <= spec["latency_ms"] < math.inf and spec["target"].startswith("torch")
    # saved on the CPU, it loads and scores the same there
    subnet = autoprune.load_subnet(spec_path.parent)
    # on the data the search ran on (the fixture's Fashion-MNIST images, as the search split them)
    data = load_data(search_args[search_args.index("--data") + 1], holdout=int(search_args[search_args.index("--holdout") + 1]),
                     seed=0)
    assert abs(accuracy(subnet, data.test) - spec["test_acc"]) <= 0.01
