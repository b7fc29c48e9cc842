"""Models as users write them (tests/models/user_models/), trained and searched from the command line as
users run it, progress on: each runs as written, or stops at set-up with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from custom_models import USER_MODELS, user_model
from quick import QUICK_FLAGS

import autoprune
from autoprune.cli import main
from autoprune.data import load_data

NCHW = "the model runs in NCHW (contiguous), not channels_last: "
VIEW_NOTE = NCHW + ("in channels_last its forward raises RuntimeError: view size is not compatible with input "
                    "tensor's size and...")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> str:
    """10 classes of (1, 8, 16, 16) volumes: blocky prototypes plus noise."""
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(10, 1, 2, 4, 4)).repeat(4, 2).repeat(4, 3).repeat(4, 4)

    def draw(n):
        y = rng.integers(0, 10, n)
        return (protos[y] * 1.5 + rng.normal(size=(n, 1, 8, 16, 16))).astype(np.float32), y

    path = tmp_path_factory.mktemp("volumes") / "v.npz"
    (x_train, y_train), (x_test, y_test) = draw(300), draw(60)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def _run(args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _train(model: str, data: str, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    return _run(["train", "--model", f"{USER_MODELS / model}", "--data", data, "--epochs", "1", "--holdout", "60",
                 "--batch-size", "64", "--out", str(out), *extra], capsys)


def _search(model: str, data: str, weights: Path | str, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    return _run(["search", "--model", f"{USER_MODELS / model}", "--data", data, "--weights", str(weights),
                 "--budget", "50%flops", "--trials", "4", "--warm-start", "--finetune-top", "1",
                 "--finetune-epochs", "0.2", "--holdout", "60", "--score-images", "60", "--calib-batches", "1",
                 "--batch-size", "64", "--out", str(out), *QUICK_FLAGS, *extra], capsys)




def _one_subnet(run: Path) -> dict:
    specs = sorted(run.glob("subnets/*/spec.json"))
    assert len(specs) == 1, specs
    return json.loads(specs[0].read_text())


def test_a_view_on_a_conv_map_trains_and_searches_in_nchw(images, tmp_path, capsys):
    weights = tmp_path / "view.pt"
    code, err = _train("view_flatten.py:build", images, weights, capsys)
    assert code == 0, err
    assert err.count(VIEW_NOTE) == 1 and not any("Traceback" in line for line in err)
    assert json.loads(weights.with_suffix(".json").read_text())["layout"] == "contiguous"
    run = tmp_path / "run"
    code, err = _search("view_flatten.py:build", images, weights, run, capsys)
    assert code == 0, err
    assert err.count(VIEW_NOTE) == 1
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["layout"] == "contiguous" and config["model_notes"] == [VIEW_NOTE]
    spec = _one_subnet(run)
    assert spec["contract"] == {"layout": "contiguous", "output_key": None}
    baseline = json.loads((run / "pareto.json").read_text())["baseline"]
    assert spec["macs"] <= 0.5 * baseline["macs"]
    subnet = autoprune.load_subnet(run / "subnets" / spec["id"])
    assert autoprune.models.contract_of(subnet).layout == "contiguous"
    assert subnet(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_dict_output_gives_its_logits(images, tmp_path, capsys):
    weights = tmp_path / "dict.pt"
    code, err = _train("dict_output.py:build", images, weights, capsys)
    assert code == 0, err
    assert not any(line.startswith(NCHW) for line in err)  # a dict output runs in channels_last
    run = tmp_path / "run"
    code, err = _search("dict_output.py:build", images, weights, run, capsys)
    assert code == 0, err
    assert _one_subnet(run)["contract"] == {"layout": "channels_last", "output_key": None}
    # the baseline's test accuracy is that of output["logits"] (the 4-way "aux" would be another number)
    model = user_model("dict_output").build()
    model.load_state_dict(torch.load(weights))
    data = load_data(images, holdout=60)
    with torch.no_grad():
        output = model.eval()(data.test.x)
    expected = float((output["logits"].argmax(1) == data.test.y).float().mean())
    assert expected != float((output["aux"].argmax(1) == data.test.y).float().mean())
    baseline = json.loads((run / "pareto.json").read_text())["baseline"]
    assert baseline["test_acc"] == pytest.approx(expected)


def test_a_dict_gives_its_logits_entry_where_it_is_not_first(images, tmp_path, capsys):
    weights = tmp_path / "last.pt"
    code, err = _train("dict_logits_last.py:build", images, weights, capsys, "--quiet")
    assert code == 0 and err[0].startswith("trained "), err
    code, err = _search("dict_logits_last.py:build", images, weights, tmp_path / "run", capsys, "--quiet")
    assert code == 0, err
    assert _one_subnet(tmp_path / "run")["contract"]["output_key"] is None


def test_an_output_key_that_does_not_pick_the_logits_is_one_line(images, tmp_path, capsys):
    weights = tmp_path / "dict.pt"
    torch.save(user_model("dict_output").build().state_dict(), weights)
    message = ("autoprune: error: the model's output 'aux' has shape (1, 4) but the data has 10 classes: "
               "--output-key 'aux' does not pick the logits")
    code, err = _search("dict_output.py:build", images, weights, tmp_path / "run", capsys, "--output-key", "aux")
    assert (code, err) == (2, [message])
    assert not (tmp_path / "run").exists()
    code, err = _train("dict_output.py:build", images, tmp_path / "aux.pt", capsys, "--output-key", "aux", "--quiet")
    assert (code, err) == (2, [message])


def test_a_tuple_output_with_the_logits_second(images, tmp_path, capsys):
    weights = tmp_path / "tuple.pt"
    code, err = _train("tuple_output.py:build", images, weights, capsys)
    assert (code, err) == (2, [("autoprune: error: the model's output [0] has shape (1, 16) but the data has 10 "
                               "classes: the logits must be (batch, classes); give --output-key if they are elsewhere "
                               "in the output")])
    code, err = _train("tuple_output.py:build", images, weights, capsys, "--output-key", "1")
    assert code == 0, err
    run = tmp_path / "run"
    code, err = _search("tuple_output.py:build", images, weights, run, capsys, "--output-key", "1")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["output_key"] == "1"
    spec = _one_subnet(run)
    assert spec["contract"] == {"layout": "channels_last", "output_key": "1"}
    subnet = autoprune.load_subnet(run / "subnets" / spec["id"])
    _features, logits = subnet(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)


def test_reshape_and_a_flatten_after_a_permute_train_in_channels_last(images, tmp_path, capsys):
    weights = tmp_path / "reshape.pt"
    code, err = _train("reshape_flatten.py:build", images, weights, capsys)
    assert code == 0, err
    assert not any(line.startswith(NCHW) for line in err)
    assert json.loads(weights.with_suffix(".json").read_text())["layout"] == "channels_last"


def test_a_head_that_runs_in_training_only(images, tmp_path, capsys):
    weights = tmp_path / "aux.pt"
    code, err = _train("train_aux.py:build", images, weights, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    code, err = _search("train_aux.py:build", images, weights, run, capsys, "--distill")
    assert code == 0, err
    spec = _one_subnet(run)
    subnet = autoprune.load_subnet(run / "subnets" / spec["id"])
    assert subnet.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    code, err = _train("bad_outputs.py:train_aux_first", images, tmp_path / "bad.pt", capsys)
    assert (code, err) == (2, [("autoprune: error: the model's output [0] in train mode has shape (2, 4) but the data "
                               "has 10 classes: the logits must be (batch, classes); give --output-key if they are "
                               "elsewhere in the output")])


def test_a_compiled_model_is_pruned_uncompiled(images, tmp_path, capsys):
    note = "the model is torch.compile'd: autoprune prunes and runs the Sequential it wraps, uncompiled"
    weights = tmp_path / "compiled.pt"
    code, err = _train("compiled.py:build", images, weights, capsys)
    assert code == 0, err
    assert err.count(note) == 1
    assert not any(key.startswith("_orig_mod.") for key in torch.load(weights))  # the user's own names
    prefixed = tmp_path / "prefixed.pt"  # as saved from the compiled model itself
    torch.save({f"_orig_mod.{k}": v for k, v in torch.load(weights).items()}, prefixed)
    run = tmp_path / "run"
    code, err = _search("compiled.py:build", images, prefixed, run, capsys)
    assert code == 0, err
    assert err.count(note) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["model_notes"] == [note]
    spec = _one_subnet(run)
    subnet = autoprune.load_subnet(run / "subnets" / spec["id"])
    assert isinstance(subnet, torch.nn.Sequential)


def test_lazy_layers_train_search_and_export(images, tmp_path, capsys):
    weights = tmp_path / "lazy.pt"
    code, err = _train("lazy.py:build", images, weights, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    code, err = _search("lazy.py:build", images, weights, run, capsys)
    assert code == 0, err
    spec = _one_subnet(run)
    code, err = _run(["export", str(run), "--subnet", spec["id"], "--format", "state-dict"], capsys)
    assert code == 0 and "matches PyTorch" in " ".join(err), err


def test_volumes_run_in_nchw(volumes, tmp_path, capsys):
    note = NCHW + "its input is 5-D (channels_last is for 4-D images)"
    weights = tmp_path / "volume.pt"
    code, err = _train("volume.py:build", volumes, weights, capsys)
    assert code == 0, err
    assert err.count(note) == 1
    run = tmp_path / "run"
    code, err = _search("volume.py:build", volumes, weights, run, capsys)
    assert code == 0, err
    assert err.count(note) == 1
    assert _one_subnet(run)["contract"]["layout"] == "contiguous"


@pytest.mark.parametrize("factory,message", [
    ("string", ("the model returned a str, not logits: autoprune takes a tensor, a dict (its 'logits' or first tensor) "
               "or a tuple (its first tensor), or the one --output-key names")),
    ("three_classes", ("the model's output has shape (1, 3) but the data has 10 classes: the logits must be (batch, "
                      "classes); give --output-key if they are elsewhere in the output")),
    ("detached", ("in train mode the model's logits carry no gradient (a detach() or no_grad in its forward?): it could "
                 "not be trained or fine-tuned")),
])
def test_outputs_autoprune_cannot_take_are_one_line(images, tmp_path, capsys, factory, message):
    code, err = _train(f"bad_outputs.py:{factory}", images, tmp_path / "w.pt", capsys)
    assert (code, err) == (2, [f"autoprune: error: {message}"])
    assert not (tmp_path / "w.pt").exists()
    weights = tmp_path / "given.pt"
    torch.save(getattr(user_model("bad_outputs"), factory)().state_dict(), weights)
    code, err = _search(f"bad_outputs.py:{factory}", images, weights, tmp_path / "run", capsys)
    assert (code, err) == (2, [f"autoprune: error: {message}"])
    assert not (tmp_path / "run").exists()


def test_a_failure_after_the_checks_leaves_nothing_that_blocks_the_same_command(images, tmp_path, capsys):
    # passes every set-up check (batches of 1 and 2), then fails on the baseline's batch of 256 held-out images
    weights = tmp_path / "small.pt"
    torch.save(user_model("bad_outputs").small_batches().state_dict(), weights)
    run = tmp_path / "run"
    for _ in range(2):  # the same command twice: the same error, not "already holds a run"
        code, err = _search("bad_outputs.py:small_batches", images, weights, run, capsys, "--holdout", "300",
                            "--score-images", "300")
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("autoprune: error: the unpruned model fails on batches of the data (up to 500 "
                                 "images): RuntimeError: ") and "written for batches of at most 64 images" in err[0]
        assert not run.exists()
