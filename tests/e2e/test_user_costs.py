"""Searches of the kinds of models users bring, from the command line with progress on: the budget holds
on the subnet's real cost (counted on the saved subnet, as it runs), the MACs reported are that count, and
config.yaml, report.md and report.html say which groups were searched and which layers never pruned, why."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from custom_models import USER_MODELS, user_model
from quick import QUICK_FLAGS

from autoprune.cli import main
from autoprune.measure.count import count_cost
from autoprune.results import load_subnet

# model -> (budget, the group that must be searched, a layer never pruned and the start of why)
CASES = {
    "transposed_conv": ("50%flops", "up.0", ("fc", "the classifier")),
    "reused_block": ("3MMACs", "shared.0", ("fc", "the classifier")),
    "chunk_gating": ("50%flops", "g2.conv", ("fc", "the classifier")),
    "attention_vit": ("50%flops", "blocks.1.mlp.2", ("head", "the classifier")),
    "gate_broadcast": ("50%flops", "conv_a.0", ("gate.squash", "a single output channel")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_search_meets_the_budget_on_the_real_cost(name, images, tmp_path, capsys):
    budget, searched, (layer, why) = CASES[name]
    torch.manual_seed(0)
    model = user_model(name).build()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "run"
    code = main(["search", "--model", f"{USER_MODELS / name}.py:build", "--data", images, "--weights", str(weights),
                 "--budget", budget, "--trials", "4", "--warm-start", "--finetune-top", "1", "--finetune-epochs",
                 "0.1", "--holdout", "60", "--score-images", "100", "--calib-batches", "1", "--batch-size", "64",
                 "--out", str(out), *QUICK_FLAGS])
    assert code == 0, capsys.readouterr().err
    x = torch.randn(1, 1, 28, 28)
    base = count_cost(model, x)
    specs = sorted(out.glob("subnets/*/spec.json"))
    assert len(specs) == 1
    spec = json.loads(specs[0].read_text())
    real = count_cost(load_subnet(specs[0].parent), x)
    assert (spec["macs"], spec["params"]) == (real.macs, real.params)
    limit = 3e6 if budget == "3MMACs" else 0.5 * base.macs
    assert real.macs <= limit < base.macs
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert searched in [g["name"] for g in config["groups"]]
    assert config["unprunable"][layer].startswith(why)
    assert config["cost_check"]["base"]["traced_macs"] == base.macs
    report = (out / "report.md").read_text()
    assert "calibration batches of 64, 60 held-out training images" in report  # 100 asked, 60 there
    assert f"| {layer} | {config['unprunable'][layer]} |" in report
    assert config["unprunable"][layer] in (out / "report.html").read_text()


def test_inspect_prints_what_a_search_would_see(images, capsys):
    code = main(["inspect", "--model", f"{USER_MODELS / 'pixel_shuffle'}.py:build", "--data", images, "--json"])
    assert code == 0
    seen = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["channels"], g["step"]) for g in seen["groups"]] == [("c2", 16, 1), ("c1", 16, 1)]
    assert seen["unprunable"]["up"].startswith("its channels pass through PixelShuffleBackward0 (32 -> 8 channels)")
    assert seen["cost_check"]["base"]["traced_macs"] == seen["cost_check"]["base"]["analytic_macs"] == 1157344
    assert seen["layout"] == "channels_last"
    code = main(["inspect", "--model", f"{USER_MODELS / 'groupnorm_net'}.py:build", "--data", images])
    assert code == 0
    text = capsys.readouterr().out
    assert "GroupNorm 'g2' has 4 groups" in text and "254,336 traced, 254,336 analytic" in text
