"""The ``synthetic`` data source: seeded noise images with random labels, for latency and structure only."""

import numpy as np
import pytest
import torch

from autoprune.data import get_data_source, load_data
from autoprune.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _arrays(arg):
    return get_data_source("synthetic").obj(arg)


def test_arrays_have_the_asked_shape_dtype_and_classes():
    x_train, y_train, x_test, y_test = _arrays("3x224x224")
    assert x_train.shape == (256, 3, 224, 224) and x_test.shape == (64, 3, 224, 224)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.shape == (256,) and y_test.shape == (64,)
    assert np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)
    labels = np.concatenate([y_train, y_test])
    assert labels.min() >= 0 and labels.max() == 999  # 1000 classes by default
    assert len(np.unique(labels)) > 100  # random labels, not one class
    assert abs(float(x_train.mean())) < 0.01 and abs(float(x_train.std()) - 1) < 0.01  # standard normal


def test_the_same_arrays_every_time():
    first, again = _arrays("1x16x12:5"), _arrays("1x16x12:5")
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0][0], first[0][1])  # but not one image repeated


def test_load_data_gives_a_bundle_of_the_asked_shape_and_classes():
    bundle = load_data("synthetic:1x28x20:7")
    assert bundle.input_shape == (1, 28, 20)
    assert bundle.num_classes == 7
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    # 256 training images: the default holdout of 5000 shrinks to a tenth of them
    assert (len(bundle.train), len(bundle.holdout), len(bundle.test)) == (231, 25, 64)
    assert bundle.augment == ()
    assert torch.equal(load_data("synthetic:1x28x20:7").train.x, bundle.train.x)


def test_help_says_it_is_for_latency_only():
    help_text = get_data_source("synthetic").help
    assert "latency" in help_text and "means nothing" in help_text


@pytest.mark.parametrize("spec, message", [
    ("synthetic", "needs an image shape: synthetic:CxHxW"),
    ("synthetic:", "needs an image shape"),
    ("synthetic:3x224", "the shape must be three positive integers CxHxW"),
    ("synthetic:axbxc", "the shape must be three positive integers CxHxW"),
    ("synthetic:3x0x224", "the shape must be three positive integers CxHxW"),
    ("synthetic:3x224x224x2", "the shape must be three positive integers CxHxW"),
    ("synthetic:3x224x224:0", "CLASSES must be a positive integer, not '0'"),
    ("synthetic:3x224x224:ten", "CLASSES must be a positive integer, not 'ten'"),
    ("synthetic:8x16x3", "reads as channels-last"),
    ("synthetic:3x4096x4096", "would take 48.0 GiB; the limit is 1 GiB"),
])
def test_wrong_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_data(spec)
