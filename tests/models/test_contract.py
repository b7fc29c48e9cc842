"""How autoprune runs a user's model (autoprune/models/contract.py): the logits rule, the layout decision,
the set-up checks, and that the decision travels with the model to every place that runs it."""

from __future__ import annotations

import collections
import copy
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from quick import QUICK_OPTIONS
from torch import nn

from autoprune.data.bundle import DataBundle, Split
from autoprune.errors import UserError
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.measure.latency import measure_latency
from autoprune.models import check_model, contract_of, load_weights, logits_of, prepare_model
from autoprune.models.contract import RunContract, input_to, model_to, set_contract
from autoprune.results import RunDir, load_subnet
from autoprune.train import train

USER_MODELS = Path(__file__).with_name("user_models")
X = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def user_model(name: str, factory: str = "build", **kwargs) -> nn.Module:
    spec = importlib.util.spec_from_file_location(f"user_models_{name}", USER_MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return getattr(module, factory)(**kwargs)


# --- the logits rule -------------------------------------------------------------------------------

A, B = torch.zeros(2, 3), torch.ones(2, 3)


def test_a_tensor_is_its_own_logits_whatever_the_key():
    assert logits_of(A) is A and logits_of(A, "aux") is A


def test_a_dict_gives_its_key_else_logits_else_its_first_tensor():
    assert logits_of({"aux": B, "logits": A}) is A
    assert logits_of({"aux": B, "logits": A}, "aux") is B
    assert logits_of({"n": 3, "scores": A, "other": B}) is A  # the first TENSOR value


def test_a_tuple_gives_its_index_else_its_first_tensor():
    assert logits_of((None, A, B)) is A
    assert logits_of((A, B), "1") is B and logits_of([A, B], 1) is B and logits_of((A, B), "-1") is B
    Out = collections.namedtuple("Out", "features logits")
    assert logits_of(Out(A, B), "logits") is B  # a named tuple by field name too


@pytest.mark.parametrize("output,key,message", [
    ("logits", None, ("the model returned a str, not logits: autoprune takes a tensor, a dict (its 'logits' or first "
                     "tensor) or a tuple (its first tensor), or the one --output-key names")),
    ({"logits": A}, "aux",
     "the model's output dict has no key 'aux' (its keys: 'logits'): give --output-key one of them"),
    ({"n": 3}, None, ("the model returned a dict without a tensor (its keys: 'n'): return the logits as a tensor, or "
                     "give --output-key")),
    ((A, B), "aux", "--output-key 'aux' is not an index, and the model returned a tuple of 2: give one of 0..1"),
    ((A, B), "2", "--output-key '2' is out of range: the model returned a tuple of 2"),
    ((A, "x"), "1", "the model's output [1] is a str, not a tensor of logits: give --output-key to pick the logits"),
    (None, None, ("the model returned a NoneType, not logits: autoprune takes a tensor, a dict (its 'logits' or first "
                 "tensor) or a tuple (its first tensor), or the one --output-key names")),
])
def test_what_is_not_logits_is_one_clear_line(output, key, message):
    with pytest.raises(UserError) as error:
        logits_of(output, key)
    assert str(error.value) == message


# --- the contract travels with the model -------------------------------------------------------------


def test_the_default_contract_and_one_that_travels():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))  # importable, for pickle
    assert contract_of(model) == RunContract("channels_last", None)
    set_contract(model, RunContract("contiguous", "logits"))
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert contract_of(other) == RunContract("contiguous", "logits")
    assert "_autoprune_contract" not in str(list(model.state_dict()))  # the weights stay plain tensors


def test_the_contract_survives_pruning_and_a_saved_subnet(tmp_path, subnet_spec):
    from autoprune.pruning.space import PruningSpace

    model = user_model("view_flatten").eval()
    check_model(model, X, num_classes=10)
    space = PruningSpace(model, X)
    subnet, kept = space.prune(space.uniform_ratios(0.5))
    assert contract_of(subnet).layout == "contiguous"
    spec = subnet_spec(model=f"{USER_MODELS / 'view_flatten.py'}:build", in_channels=1, num_classes=10,
                       input_shape=[1, 28, 28], kept=kept, channels={g.name: g.channels for g in space.groups})
    spec.save(tmp_path, subnet)
    loaded = load_subnet(tmp_path)
    assert contract_of(loaded) == RunContract("contiguous", None)
    torch.testing.assert_close(loaded(X), subnet.eval()(X))


# --- the layout ----------------------------------------------------------------------------------------


def test_a_view_on_a_conv_map_runs_in_nchw_and_says_why():
    model = user_model("view_flatten")
    contract = check_model(model, X, num_classes=10)
    assert contract.layout == "contiguous" and contract_of(model) is contract
    assert contract.notes == (("the model runs in NCHW (contiguous), not channels_last: in channels_last its forward "
                              "raises RuntimeError: view size is not compatible with input tensor's size and..."),)


def test_reshape_and_flatten_after_a_permute_stay_in_channels_last():
    model = user_model("reshape_flatten")
    contract = check_model(model, X, num_classes=10)
    assert contract.layout == "channels_last" and contract.notes == ()


class RawMemory(nn.Module):
    """Reads its feature map's memory in storage order (as a custom op may): runs in channels_last,
    with other logits there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(torch.as_strided(y, (y.shape[0], y[0].numel()), (y[0].numel(), 1)))


def test_a_model_whose_logits_change_in_channels_last_runs_in_nchw():
    model = RawMemory()
    contract = check_model(model, X, num_classes=10)
    assert contract.layout == "contiguous"
    assert contract.notes[0].startswith("the model runs in NCHW (contiguous), not channels_last: in channels_last "
                                        "its logits differ from NCHW's by ")


def test_volumes_run_in_nchw():
    model = user_model("volume")
    contract = check_model(model, torch.randn(1, 1, 8, 16, 16), num_classes=10)
    assert contract.layout == "contiguous"
    assert contract.notes == (("the model runs in NCHW (contiguous), not channels_last: its input is 5-D "
                              "(channels_last is for 4-D images)"),)
    assert measure_latency(model, (1, 8, 16, 16), repeats=2) > 0  # model_to does not try channels_last on it


def test_model_and_inputs_move_in_the_models_layout():
    model = user_model("view_flatten")
    check_model(model, X, num_classes=10)
    model_to(model, "cpu")
    assert model.c1.weight.is_contiguous()
    x = torch.randn(4, 1, 28, 28)
    assert input_to(x.contiguous(memory_format=torch.channels_last), model).is_contiguous()
    plain = user_model("reshape_flatten")
    model_to(plain, "cpu")
    assert plain.c1.weight.is_contiguous(memory_format=torch.channels_last)
    assert input_to(x, plain).is_contiguous(memory_format=torch.channels_last)
    assert input_to(torch.randn(2, 1, 4, 8, 8), plain).is_contiguous()  # channels_last is for 4-D tensors only


# --- the set-up checks -----------------------------------------------------------------------------


def _err(call) -> str:
    with pytest.raises(UserError) as error:
        call()
    return str(error.value)


def test_wrong_widths_and_outputs_are_one_line_each():
    assert _err(lambda: check_model(user_model("dict_output"), X, output_key="aux", num_classes=10)) == (
        "the model's output 'aux' has shape (1, 4) but the data has 10 classes: --output-key 'aux' does not pick the "
        "logits")
    assert _err(lambda: check_model(user_model("bad_outputs", "three_classes"), X, num_classes=10)) == (
        "the model's output has shape (1, 3) but the data has 10 classes: the logits must be (batch, classes); give "
        "--output-key if they are elsewhere in the output")
    assert _err(lambda: check_model(user_model("bad_outputs", "string"), X, num_classes=10)).startswith(
        "the model returned a str, not logits")
    assert _err(lambda: check_model(user_model("tuple_output"), X, num_classes=10)) == (
        "the model's output [0] has shape (1, 16) but the data has 10 classes: the logits must be (batch, classes); "
        "give --output-key if they are elsewhere in the output")
    assert _err(lambda: check_model(user_model("view_flatten"), torch.randn(1, 1, 20, 20), num_classes=10)) == (
        "the model does not run on the data's input shape (1, 1, 20, 20): RuntimeError: mat1 and mat2 shapes cannot "
        "be multiplied (1x400 and 784x32)")


def test_train_mode_is_checked_too():
    model = user_model("train_aux")
    assert check_model(model, X, num_classes=10).layout == "channels_last"  # (logits, aux) in train mode is fine
    assert _err(lambda: check_model(user_model("bad_outputs", "train_aux_first"), X, num_classes=10)) == (
        "the model's output [0] in train mode has shape (2, 4) but the data has 10 classes: the logits must be "
        "(batch, classes); give --output-key if they are elsewhere in the output")
    assert _err(lambda: check_model(user_model("bad_outputs", "detached"), X, num_classes=10)) == (
        "in train mode the model's logits carry no gradient (a detach() or no_grad in its forward?): it could not be "
        "trained or fine-tuned")


def test_the_checks_leave_weights_statistics_mode_and_random_state_as_they_were():
    model = user_model("train_aux").eval()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    check_model(model, X, num_classes=10)
    after_check = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_check, torch.rand(3))
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # train mode ran on a copy: BN statistics untouched


def test_lazy_layers_take_their_shapes_before_the_weights_load(tmp_path):
    trained = user_model("lazy")
    trained(X)
    path = tmp_path / "lazy.pt"
    torch.save(trained.state_dict(), path)
    model = prepare_model(user_model("lazy"), X, num_classes=10, weights=str(path))
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())
    torch.testing.assert_close(model.eval()(X), trained.eval()(X))
    unmade = user_model("lazy")
    load_weights(unmade, path)  # lazy layers not yet materialised take the file's shapes
    torch.testing.assert_close(unmade.eval()(X), trained.eval()(X))


def test_a_compiled_model_is_unwrapped_and_its_weights_load(tmp_path):
    compiled = user_model("compiled")
    assert type(compiled).__name__ == "OptimizedModule"
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)  # keys "_orig_mod.0.weight", ...
    assert next(iter(torch.load(path))).startswith("_orig_mod.")
    model = prepare_model(user_model("compiled"), X, num_classes=10, weights=str(path))
    assert isinstance(model, nn.Sequential) and "_orig_mod" not in str(list(model.state_dict()))
    assert contract_of(model).notes == (("the model is torch.compile'd: autoprune prunes and runs the Sequential it "
                                        "wraps, uncompiled"),)
    torch.testing.assert_close(model.eval()(X), compiled._orig_mod.eval()(X))


# --- every place that runs the model honours it -------------------------------------------------------


def _noise(n: int, shape=(1, 28, 28)) -> Split:
    generator = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, *shape, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def test_scoring_training_and_latency_run_a_dict_model_in_nchw():
    class DictView(nn.Module):  # both at once: x.view on a conv map, and a dict output
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return {"aux": y.mean(), "logits": self.fc(y.view(y.shape[0], -1))}

    model = DictView()
    check_model(model, X, num_classes=10)
    split = _noise(64)
    data = DataBundle("noise", split, split, split, 10)
    assert train(model, data, epochs=1, batch_size=32, quiet=True, teacher=copy.deepcopy(model)).steps == 2
    expected = float((model.eval()(split.x)["logits"].argmax(1) == split.y).float().mean())
    assert accuracy(model, split) == pytest.approx(expected)
    evaluator = AdaptiveBNEvaluator(data, calib_batches=1, batch_size=32)
    assert 0 <= evaluator.score(copy.deepcopy(model)) <= 1
    assert measure_latency(model, (1, 28, 28), repeats=2) > 0


def test_the_taylor_criterion_takes_the_logits_from_a_dict():
    from autoprune.pruning.space import PruningSpace

    model = user_model("dict_output").eval()
    check_model(model, X, num_classes=10)
    split = _noise(32)
    space = PruningSpace(model, X, criterion="taylor", batches=list(split.batches(16)))
    assert {g.name for g in space.groups} >= {"body.0"}


def test_exports_compare_the_logits_of_a_dict_output(tmp_path):
    from autoprune.export import export_model

    model = user_model("dict_output").eval()
    check_model(model, X, num_classes=10)
    for fmt in ("torch-export", "state-dict"):
        check = export_model(model, (1, 28, 28), fmt, tmp_path / f"m.{fmt}")
        assert check.ok and check.max_abs_diff < 1e-5, check


def test_the_evaluator_converts_its_batches_once_for_an_nchw_model():
    split = _noise(40)
    evaluator = AdaptiveBNEvaluator(DataBundle("noise", split, split, split, 10), calib_batches=1, batch_size=20)
    assert evaluator.calibration_batch().is_contiguous(memory_format=torch.channels_last)
    model = user_model("view_flatten")
    check_model(model, X, num_classes=10)
    first = evaluator.score(copy.deepcopy(model))
    batch = evaluator.calibration_batch()
    assert batch.is_contiguous() and evaluator.score(copy.deepcopy(model)) == first
    assert evaluator.calibration_batch() is batch  # converted once, not for every candidate


# --- data of more than 4 dimensions, and a failed set-up leaves nothing ---------------------------------


def test_npz_volumes_load_as_they_are(tmp_path):
    from autoprune.data import load_data

    rng = np.random.default_rng(0)
    path = tmp_path / "v.npz"
    np.savez(path, x_train=rng.normal(size=(40, 1, 8, 16, 16)).astype(np.float32), y_train=rng.integers(0, 3, 40),
             x_test=rng.normal(size=(10, 1, 8, 16, 16)).astype(np.float32), y_test=rng.integers(0, 3, 10))
    data = load_data(f"npz:{path}", holdout=8)
    assert data.input_shape == (1, 8, 16, 16) and data.example_input().shape == (1, 1, 8, 16, 16)
    assert abs(float(data.train.x.mean())) < 0.1 and abs(float(data.train.x.std()) - 1) < 0.1


def test_a_run_dir_discards_only_what_it_made(tmp_path):
    made = RunDir(tmp_path / "new")
    made.create()
    (made.path / "config.yaml").write_text("x: 1\n")
    made.discard()
    assert not made.path.exists()
    given = RunDir(tmp_path / "empty")
    given.path.mkdir()
    given.create()
    (given.path / "run.json").write_text("{}")
    given.discard()
    assert given.path.is_dir() and not any(given.path.iterdir())
    untouched = RunDir(tmp_path / "other")
    untouched.path.mkdir()
    (untouched.path / "keep").write_text("")
    untouched.discard()  # create() was never called on it: nothing of ours
    assert (untouched.path / "keep").exists()


def test_a_search_failing_before_its_first_trial_can_be_run_again(tmp_path, monkeypatch):
    from autoprune import pipeline

    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.normal(size=(60, 1, 28, 28)).astype(np.float32), y_train=rng.integers(0, 10, 60),
             x_test=rng.normal(size=(20, 1, 28, 28)).astype(np.float32), y_test=rng.integers(0, 10, 20))
    weights = tmp_path / "w.pt"
    torch.save(user_model("dict_output").state_dict(), weights)

    def broken(*args, **kwargs):
        raise RuntimeError("broken before the first trial")

    monkeypatch.setattr(pipeline, "run_search", broken)
    out = tmp_path / "run"
    options = {"model": f"{USER_MODELS / 'dict_output.py'}:build", "data": f"npz:{data}", "weights": str(weights),
               "holdout": 20, "score_images": 20, "calib_batches": 1, "batch_size": 20, "trials": 2, "out": str(out),
               "quiet": True, **QUICK_OPTIONS}
    for _ in range(2):  # the second time is the same command: not "already holds a run"
        with pytest.raises(RuntimeError, match="broken before the first trial"):
            pipeline.search(**options)
        assert not out.exists()
