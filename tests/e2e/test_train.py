"""`autoprune train --init` continues from a checkpoint and records where it started."""

from __future__ import annotations

import json

import torch

from autoprune.cli import main


def test_training_continues_from_the_given_weights(tiny_npz, tiny_weights, tmp_path):
    out = tmp_path / "more.pt"
    assert main(["train", "--model", "resnet20", "--data", tiny_npz, "--init", tiny_weights, "--epochs", "0.1",
                 "--lr", "1e-7", "--holdout", "120", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    start, end = torch.load(tiny_weights), torch.load(out)
    # with a vanishing learning rate the weights stay where they started (BN statistics still move)
    for key, value in start.items():
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(end[key], value, rtol=1e-4, atol=1e-4)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["init"] == tiny_weights
    assert meta["epochs_total"] == 3.1  # the 3 epochs of the starting checkpoint, then 0.1
    assert meta["command"].startswith("autoprune train --model resnet20 ") and "--init" in meta["command"]
