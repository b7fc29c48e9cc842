import json

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models import create_model, list_models, load_weights, model_family

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = ["mobilenet_v2", "resnet20", "resnet32", "resnet56", "vgg11_bn", "vgg16_bn"]
IMAGENET = ["mobilenet_v2_imagenet", "resnet18_imagenet"]  # tests/models/test_imagenet_models.py


def test_zoo_lists_every_model():
    assert list_models() == sorted(ZOO + IMAGENET)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("in_channels, size, num_classes", [(1, 28, 7), (3, 32, 10)])
def test_zoo_model_adapts_to_channels_and_classes(name, in_channels, size, num_classes):
    torch.manual_seed(0)
    model = create_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, family",
    [
        ("resnet20", "resnet"),
        ("resnet56", "resnet"),
        ("vgg16_bn", "vgg"),
        ("mobilenet_v2", "mobilenet"),
    ],
)
def test_model_family(name, family):
    assert model_family(name) == family


def test_user_models_have_no_family():
    assert model_family("my_pkg.models:build") is None


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model 'resnet18'"):
        create_model("resnet18", in_channels=3, num_classes=10)
    with pytest.raises(UserError, match="unknown model"):
        model_family("resnet18")


def _write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text("from torch import nn\n\n" + source)
    return path


def test_factory_gets_channels_and_classes(tmp_path):
    path = _write(
        tmp_path,
        "two_args.py",
        "def factory(in_channels, num_classes):\n"
        "    return nn.Sequential(\n"
        "        nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "        nn.Linear(4, num_classes),\n"
        "    )\n",
    )
    model = create_model(f"{path}:factory", in_channels=5, num_classes=3)
    assert model[0].in_channels == 5
    assert model[-1].out_features == 3
    assert model(torch.randn(2, 5, 8, 8)).shape == (2, 3)


def test_factory_without_arguments_is_called_with_none(tmp_path):
    path = _write(tmp_path, "no_args.py", "def factory():\n    return nn.Linear(6, 2)\n")
    model = create_model(f"{path}:factory", in_channels=5, num_classes=3)
    assert (model.in_features, model.out_features) == (6, 2)


def test_factory_taking_kwargs_gets_both(tmp_path):
    source = "def factory(**kw):\n    return nn.Linear(kw['in_channels'], kw['num_classes'])\n"
    path = _write(tmp_path, "kwargs.py", source)
    model = create_model(f"{path}:factory", in_channels=4, num_classes=9)
    assert (model.in_features, model.out_features) == (4, 9)


def test_factory_returning_no_module(tmp_path):
    path = _write(tmp_path, "not_module.py", "def factory():\n    return 'a model'\n")
    with pytest.raises(UserError, match="not an nn.Module"):
        create_model(f"{path}:factory", in_channels=1, num_classes=2)


def test_factory_that_raises(tmp_path):
    path = _write(tmp_path, "raises.py", "def factory():\n    raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="RuntimeError: boom"):
        create_model(f"{path}:factory", in_channels=1, num_classes=2)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("autoprune.errors:missing", "has no callable 'missing'"),
        ("no_such_pkg.module:factory", "cannot import module"),
        ("/nonexistent/models.py:factory", "not found"),
    ],
)
def test_bad_factory_specs(spec, fragment):
    with pytest.raises(UserError, match=fragment):
        create_model(spec, in_channels=1, num_classes=2)


def test_factory_file_that_fails_to_import(tmp_path):
    path = _write(tmp_path, "broken.py", "raise ImportError('missing dependency')\n")
    with pytest.raises(UserError, match="importing .* failed"):
        create_model(f"{path}:factory", in_channels=1, num_classes=2)


@pytest.fixture(scope="module")
def resnet20_weights(tmp_path_factory):
    torch.manual_seed(1)
    model = create_model("resnet20", in_channels=1, num_classes=7)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(model.state_dict(), path)
    return model.state_dict(), path


def test_load_weights_round_trip(resnet20_weights):
    state, path = resnet20_weights
    model = create_model("resnet20", in_channels=1, num_classes=7)
    load_weights(model, path)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_weights_from_a_checkpoint_dict(resnet20_weights, tmp_path):
    state, _ = resnet20_weights
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = create_model("resnet20", in_channels=1, num_classes=7)
    load_weights(model, path)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_load_weights_of_another_architecture(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(create_model("resnet32", in_channels=1, num_classes=7).state_dict(), path)
    model = create_model("resnet20", in_channels=1, num_classes=7)
    with pytest.raises(UserError, match="do not fit") as info:
        load_weights(model, path)
    assert "unexpected keys" in str(info.value)


def test_load_weights_with_other_classes(resnet20_weights):
    _, path = resnet20_weights
    model = create_model("resnet20", in_channels=1, num_classes=10)
    mismatch = r"do not fit.*fc.weight: file \(7, 64\) vs model \(10, 64\)"
    with pytest.raises(UserError, match=mismatch):
        load_weights(model, path)


def test_load_weights_missing_file(tmp_path):
    model = create_model("resnet20", in_channels=1, num_classes=7)
    with pytest.raises(UserError, match="not found"):
        load_weights(model, tmp_path / "absent.pt")


def test_load_weights_of_something_else(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="not a state dict"):
        load_weights(nn.Linear(2, 2), path)


def _whole_model(path):
    torch.save(nn.Linear(2, 2), path)


def _cut_short(path):
    torch.save(nn.Linear(2, 2).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])


def _numpy_array(path):
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))


@pytest.mark.parametrize(("write", "why"), [
    (_whole_model, ("it holds a pickled torch.nn.modules.linear.Linear, and autoprune unpickles no objects (a whole "
                   "model saved with torch.save(model)?): save model.state_dict() instead")),
    (_cut_short, "its archive is damaged (cut short, or not saved fully)"),
    (lambda path: path.write_bytes(b""), "it is empty"),
    (lambda path: path.write_bytes(b"not a state dict"), "it is not a file torch.save wrote"),
    (_numpy_array, "it is not a file torch.save wrote"),
])
def test_unreadable_weights_are_refused_in_one_line_that_says_why(tmp_path, write, why):
    path = tmp_path / "weights.pt"
    write(path)
    with pytest.raises(UserError) as info:
        load_weights(nn.Linear(2, 2), path)
    assert str(info.value) == f"weights {path} cannot be read as a state dict: {why}"  # not torch's unsafe advice


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_shipped_baselines_fit_their_model(name):
    from autoprune.config import SHIPPED_WEIGHTS

    path = SHIPPED_WEIGHTS[(name, "fashion-mnist")]
    model = create_model(name, in_channels=1, num_classes=10)
    load_weights(model, path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == name and meta["data"] == "fashion-mnist"
    assert meta["test_acc"] > 0.85
