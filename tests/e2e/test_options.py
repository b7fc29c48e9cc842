"""Every option of ``autoprune search`` shown by its effect on the values a run writes.

Each test runs the CLI in-process with its progress bars on (the ``search_args`` search: the shipped
ResNet-20 on real Fashion-MNIST images) and checks a value that the option decides, computed here
independently where it can be, so that a pipeline that ignored the option would fail the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import torch
import yaml
from torch import nn

import autoprune
from autoprune.candidate import Candidate
from autoprune.cli import main
from autoprune.config import SHIPPED_WEIGHTS, SearchConfig
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.models import create_model
from autoprune.pruning.space import apply_kept
from autoprune.results import STUDY_NAME
from autoprune.workbench import load_workbench, make_evaluator

SHIPPED = str(SHIPPED_WEIGHTS[("resnet20", "fashion-mnist")])


def _arg(args: list[str], name: str) -> str:
    """The value of ``name`` in an argument list (the last one given, as argparse takes it)."""
    return args[len(args) - 1 - args[::-1].index(name) + 1]


def _search(search_args: list[str], out: Path, *extra: str) -> Path:
    assert main(search_args + list(extra) + ["--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    return out


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _workbench(search_args: list[str], **options):
    """The data, model and pruning space of a ``search_args`` run with ``options`` (SearchConfig fields)."""
    config = SearchConfig(model="resnet20", data=_arg(search_args, "--data"), weights=SHIPPED,
                          holdout=int(_arg(search_args, "--holdout")), batch_size=int(_arg(search_args, "--batch-size")),
                          calib_batches=int(_arg(search_args, "--calib-batches")),
                          score_images=int(_arg(search_args, "--score-images")), **options)
    return config, *load_workbench(config)


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run / 'study.db'}")


def _subnets(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.glob("subnets/*/spec.json"))]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The conv and linear weights (and biases) of a model, by name."""
    return {f"{name}.{p}": getattr(m, p).detach().clone() for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) for p in ("weight", "bias") if getattr(m, p) is not None}


def test_no_adaptive_bn_scores_each_candidate_with_its_bn_statistics_as_pruned(tmp_path, search_args):
    run = _search(search_args, tmp_path / "run", "--no-adaptive-bn", "--strategy", "random", "--trials", "3",
                  "--finetune-top", "0")
    assert _config(run)["adaptive_bn"] is False
    config, data, _, space = _workbench(search_args)
    score_images = data.holdout.subset(torch.arange(min(config.score_images, len(data.holdout))))
    recalibrating = make_evaluator(config, data)  # the default scorer, adaptive BN
    assert isinstance(recalibrating, AdaptiveBNEvaluator) and recalibrating.adaptive
    trials = pd.read_csv(run / "trials.csv").set_index("number")
    differs = 0
    for t in _study(run).trials:
        assert trials.loc[t.number, "state"] == "complete"
        ratios = Candidate.from_trial(t).ratios_to_prune(space.groups)
        vanilla = accuracy(space.prune(ratios)[0], score_images)  # the running statistics of the unpruned net
        assert trials.loc[t.number, "proxy_acc"] == vanilla
        differs += recalibrating.score(space.prune(ratios)[0]) != vanilla
    assert differs >= 1  # the two scorers tell apart: the check above says which one the run used


def test_finetune_lr_zero_leaves_the_pruned_weights_as_they_are(tmp_path, search_args):
    # SGD's step is lr x (gradient + weight decay + momentum): at lr 0 nothing moves, whatever those are
    common = ["--strategy", "random", "--trials", "2", "--finetune-top", "1", "--finetune-epochs", "0.1"]
    frozen = _search(search_args, tmp_path / "lr0", *common, "--finetune-lr", "0")
    moved = _search(search_args, tmp_path / "default", *common)
    _, _, _, space = _workbench(search_args)
    for run, lr in ((frozen, 0.0), (moved, SearchConfig.finetune_lr)):
        (spec,) = _subnets(run)
        assert spec["retrain"]["lr"] == lr and spec["retrain"]["epochs"] > 0
        pruned, kept = space.prune(spec["ratios"])
        assert kept == spec["kept"]
        saved = _weights(autoprune.load_subnet(run / "subnets" / spec["id"]))
        before = _weights(pruned)
        assert saved.keys() == before.keys()
        same = [name for name in saved if torch.equal(saved[name], before[name])]
        if lr == 0:
            assert same == list(saved)
        else:
            assert not same  # every layer trained


def test_criterion_batches_decide_which_channels_a_data_driven_criterion_keeps(tmp_path, search_args):
    common = ["--criterion", "taylor", "--strategy", "random", "--trials", "2", "--finetune-top", "1",
              "--finetune-epochs", "0.05"]
    runs = {n: _search(search_args, tmp_path / f"b{n}", *common, "--criterion-batches", str(n)) for n in (1, 4)}
    spaces = {n: _workbench(search_args, criterion="taylor", criterion_batches=n)[3] for n in (1, 4)}
    for n, run in runs.items():
        assert _config(run)["criterion_batches"] == n
        (spec,) = _subnets(run)
        ranked_on = {m: space.kept_indices(spec["ratios"]) for m, space in spaces.items()}
        assert ranked_on[1] != ranked_on[4]  # one batch ranks the channels otherwise than four
        assert spec["kept"] == ranked_on[n]


def test_seed_fixes_the_search_and_another_seed_changes_it(tmp_path, search_args):
    def trials(name: str, seed: int) -> pd.DataFrame:
        run = _search(search_args, tmp_path / name, "--seed", str(seed), "--trials", "3", "--finetune-top", "0")
        assert _config(run)["seed"] == seed
        frame = pd.read_csv(run / "trials.csv")
        # the predicted latency comes from this machine's timings of the layers: the same search, other figures
        return frame.drop(columns=[c for c in frame.columns if c.endswith("seconds") or c == "predicted_latency_ms"])

    first, again, other = trials("a", 3), trials("b", 3), trials("c", 4)
    pd.testing.assert_frame_equal(first, again)
    ratios = [c for c in first.columns if c.startswith("ratio:")]
    assert not first[ratios].equals(other[ratios])


def test_limit_train_fine_tunes_on_exactly_that_many_images(tmp_path, search_args, capsys):
    limit, epochs, batch = 300, 0.5, int(_arg(search_args, "--batch-size"))
    run = _search(search_args, tmp_path / "run", "--limit-train", str(limit), "--strategy", "random", "--trials", "2",
                  "--finetune-top", "1", "--finetune-epochs", str(epochs))
    assert _config(run)["data_summary"]["train"] == limit
    # train.py steps through ceil(N / batch) batches an epoch: the steps, and the epochs they make, follow N
    per_epoch = math.ceil(limit / batch)
    steps = math.ceil(epochs * per_epoch)
    (spec,) = _subnets(run)
    assert spec["retrain"]["epochs"] == round(steps / per_epoch, 4)
    bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"fine-tune {spec['id']}")]
    assert bar and all(f" {steps}/{steps} " in line for line in bar), bar  # its bar counts the steps


def test_limit_test_measures_test_accuracy_on_the_first_n_test_images(tmp_path, search_args):
    limit = 120
    run = _search(search_args, tmp_path / "run", "--limit-test", str(limit), "--strategy", "random", "--trials", "2",
                  "--finetune-top", "1", "--finetune-epochs", "0.05")
    assert _config(run)["data_summary"]["test"] == limit
    _, data, model, _ = _workbench(search_args)
    first = data.test.subset(torch.arange(limit))
    on_first, on_all = accuracy(model, first), accuracy(model, data.test)
    assert on_first != on_all  # so the recorded figure says which images it was measured on
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["baseline"]["test_acc"] == on_first
    (spec,) = _subnets(run)
    assert accuracy(autoprune.load_subnet(run / "subnets" / spec["id"]), first) == spec["test_acc"]


def test_export_state_dict_writes_the_subnets_tensors_that_load_into_its_architecture(tmp_path, search_args):
    run = _search(search_args, tmp_path / "run", "--export", "state-dict", "--strategy", "random", "--trials", "2",
                  "--finetune-top", "1", "--finetune-epochs", "0.05")
    front = json.loads((run / "pareto.json").read_text())["front"]
    assert front
    _, data, _, _ = _workbench(search_args)
    x = data.test.x[:64]
    for row in front:
        directory = run / "subnets" / row["id"]
        spec = json.loads((directory / "spec.json").read_text())
        assert json.loads((directory / "exports.json").read_text())["state-dict"]["path"] == str(directory / "subnet.pt")
        state = torch.load(directory / "subnet.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        architecture = create_model("resnet20", in_channels=spec["in_channels"], num_classes=spec["num_classes"])
        apply_kept(architecture.eval(), torch.zeros(1, *spec["input_shape"]), spec["kept"], spec["channels"])
        for tensor in architecture.state_dict().values():  # nothing of the unpruned weights is left to match by chance
            tensor.zero_()
        architecture.load_state_dict(state)  # strict: every tensor, at the pruned shapes
        with torch.no_grad():
            assert torch.equal(architecture.eval()(x), autoprune.load_subnet(directory)(x))
