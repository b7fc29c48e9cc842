"""Data and baselines shared by the end-to-end tests.

Searches run on 1900 real Fashion-MNIST images with the shipped checkpoint: the baseline
scores well below 100% there, and pruned candidates score apart, so comparisons of accuracies,
rankings, fine-tune choice and front mean something. Tests that train a baseline of their own use
the tiny synthetic set, which a few epochs learn.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quick import QUICK_FLAGS

from autoprune.cli import main
from autoprune.config import SHIPPED_WEIGHTS
from autoprune.data.registry import get_data_source


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """4 classes of 16x16 gray images: a bright square in the class's quadrant, plus noise."""
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6] += 180
    return x, y


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    x_train, y_train = _images(640, rng)
    x_test, y_test = _images(200, rng)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


@pytest.fixture(scope="session")
def tiny_weights(tiny_npz, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    code = main(["train", "--model", "resnet20", "--data", tiny_npz, "--epochs", "3", "--holdout", "120",
                 "--batch-size", "64", "--out", str(out), "--quiet"])
    assert code == 0
    return str(out)


FMNIST_TRAIN, FMNIST_TEST, FMNIST_HOLDOUT = 1600, 300, 200
SHIPPED = str(SHIPPED_WEIGHTS[("resnet20", "fashion-mnist")])


@pytest.fixture(scope="session")
def fmnist_npz(tmp_path_factory) -> str:
    """A random 1600 training and 300 test images of the installed Fashion-MNIST (CI installs it)."""
    x_train, y_train, x_test, y_test = get_data_source("fashion-mnist").obj(None)
    rng = np.random.default_rng(0)
    train = rng.choice(len(x_train), FMNIST_TRAIN, replace=False)
    test = rng.choice(len(x_test), FMNIST_TEST, replace=False)
    path = tmp_path_factory.mktemp("fmnist") / "fmnist.npz"
    np.savez(path, x_train=x_train[train], y_train=y_train[train], x_test=x_test[test], y_test=y_test[test])
    return f"npz:{path}"


@pytest.fixture
def search_args(fmnist_npz):
    """Arguments of a small but complete search, progress bars on, as a user types it: the shipped
    ResNet-20 on Fashion-MNIST images, 200 held out for scoring."""
    return ["search", "--model", "resnet20", "--data", fmnist_npz, "--weights", SHIPPED,
            "--budget", "50%flops", "--holdout", str(FMNIST_HOLDOUT), "--batch-size", "64", "--calib-batches", "2",
            "--score-images", str(FMNIST_HOLDOUT), "--finetune-epochs", "0.3", *QUICK_FLAGS]


@pytest.fixture
def tiny_search_args(tiny_npz, tiny_weights):
    """A search on the tiny synthetic set, where every candidate scores about the same: for tests of
    bookkeeping (resume, bounds, phases) that compare no accuracies, at a third of the cost per image."""
    return ["search", "--model", "resnet20", "--data", tiny_npz, "--weights", tiny_weights,
            "--budget", "50%flops", "--holdout", "120", "--batch-size", "64", "--calib-batches", "2",
            "--score-images", "120", "--finetune-epochs", "0.3", *QUICK_FLAGS]


@pytest.fixture(scope="session")
def picky_weights(tmp_path_factory) -> str:
    """Weights of custom_models.only_unpruned (untrained: its candidates fail before they are scored)."""
    from custom_models import Picky, pruned

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("picky") / "picky.pt"
    torch.save(Picky(pruned).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> str:
    """10 classes of 1x28x28 images (tests/models/user_models/make_data.py): the user models' data."""
    from custom_models import user_model

    path = tmp_path_factory.mktemp("user-data") / "d.npz"
    user_model("make_data").make(path, n_train=400, n_test=100)
    return f"npz:{path}"
