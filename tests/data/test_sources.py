import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.data import load_data, registry
from autoprune.data.bundle import augment_batch
from autoprune.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx(root, split, images, labels):
    with gzip.open(root / f"{split}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">iiii", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(root / f"{split}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())


def _normalised(x_train, x_other):
    """What the bundle should hold: x / 255 standardised per channel with training statistics."""
    axes = (0, 2, 3)
    ref = x_train.astype(np.float64) / 255.0
    mean, std = ref.mean(axis=axes, keepdims=True), ref.std(axis=axes, ddof=1, keepdims=True)
    return torch.from_numpy((x_other.astype(np.float64) / 255.0 - mean) / std).float()


def _source_rows(split_x, expected):
    """Index in ``expected`` of each image of ``split_x`` (images must match to float precision)."""
    exact = "donot_use_mm_for_euclid_dist"
    dist = torch.cdist(split_x.flatten(1), expected.flatten(1), compute_mode=exact)
    best = dist.argmin(dim=1)
    assert torch.all(dist[torch.arange(len(best)), best] < 1e-3)
    return best.numpy()


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 60, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    _write_idx(tmp_path, "train", arrays["x_train"], arrays["y_train"])
    _write_idx(tmp_path, "t10k", arrays["x_test"], arrays["y_test"])
    return tmp_path, arrays


def test_fashion_mnist_shapes_split_and_labels(fashion_dir):
    root, a = fashion_dir
    bundle = load_data(f"fashion-mnist:{root}", holdout=12, seed=0)

    assert bundle.train.x.shape == (48, 1, 28, 28)
    assert bundle.holdout.x.shape == (12, 1, 28, 28)
    assert bundle.test.x.shape == (20, 1, 28, 28)
    assert bundle.train.x.dtype == torch.float32
    assert len(bundle.train) + len(bundle.holdout) == 60
    assert bundle.num_classes == int(max(a["y_train"].max(), a["y_test"].max())) + 1
    assert bundle.augment == ("crop", "flip")
    assert bundle.in_channels == 1 and bundle.input_shape == (1, 28, 28)

    x_train = a["x_train"][:, None]
    expected_train = _normalised(x_train, x_train)
    splits = (bundle.train, bundle.holdout)
    rows = np.concatenate([_source_rows(split.x, expected_train) for split in splits])
    assert sorted(rows) == list(range(60))
    labels = torch.cat([bundle.train.y, bundle.holdout.y]).numpy()
    np.testing.assert_array_equal(labels, a["y_train"][rows])

    test_rows = _source_rows(bundle.test.x, _normalised(x_train, a["x_test"][:, None]))
    np.testing.assert_array_equal(test_rows, np.arange(20))
    np.testing.assert_array_equal(bundle.test.y.numpy(), a["y_test"])


def test_fashion_mnist_is_normalised_with_training_statistics(fashion_dir):
    root, _ = fashion_dir
    bundle = load_data(f"fashion-mnist:{root}", holdout=12, seed=0)
    everything = torch.cat([bundle.train.x, bundle.holdout.x])
    assert everything.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert everything.std().item() == pytest.approx(1.0, abs=1e-4)
    assert abs(bundle.train.x.mean().item()) < 0.05


def test_fashion_mnist_missing_dir_names_the_missing_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        load_data(f"fashion-mnist:{missing}")
    message = str(info.value)
    assert str(missing) in message
    assert "train-images-idx3-ubyte.gz" in message


def test_fashion_mnist_default_dir_missing_suggests_install(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_data("fashion-mnist")


def test_holdout_split_is_seeded(fashion_dir):
    root, _ = fashion_dir
    spec = f"fashion-mnist:{root}"
    first = load_data(spec, holdout=20, seed=3).holdout
    again = load_data(spec, holdout=20, seed=3).holdout
    other = load_data(spec, holdout=20, seed=4).holdout
    assert torch.equal(first.y, again.y) and torch.equal(first.x, again.x)
    assert not torch.equal(first.y, other.y)


def test_holdout_larger_than_train_falls_back_to_a_tenth(fashion_dir):
    root, _ = fashion_dir
    bundle = load_data(f"fashion-mnist:{root}", holdout=5000)
    assert len(bundle.holdout) == 6
    assert len(bundle.train) == 54


def test_limit_train_caps_the_training_split(fashion_dir):
    root, _ = fashion_dir
    bundle = load_data(f"fashion-mnist:{root}", holdout=10, limit_train=7)
    assert len(bundle.train) == 7
    assert len(bundle.holdout) == 10


def _write_cifar_batch(path, data, labels):
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, b"labels": list(labels), b"batch_label": b"x"}, fh)


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 30)
    _write_cifar_batch(tmp_path / "data_batch_1", data[:12], labels[:12])
    _write_cifar_batch(tmp_path / "data_batch_2", data[12:24], labels[12:24])
    _write_cifar_batch(tmp_path / "test_batch", data[24:], labels[24:])

    bundle = load_data(f"cifar10:{tmp_path}", holdout=4, seed=0)
    assert bundle.train.x.shape == (20, 3, 32, 32)
    assert bundle.holdout.x.shape == (4, 3, 32, 32)
    assert bundle.test.x.shape == (6, 3, 32, 32)
    assert bundle.augment == ("crop", "flip")

    planes = data.reshape(-1, 3, 32, 32)
    rows = _source_rows(bundle.test.x, _normalised(planes[:24], planes[24:]))
    np.testing.assert_array_equal(rows, np.arange(6))
    np.testing.assert_array_equal(bundle.test.y.numpy(), labels[24:])
    rows = _source_rows(bundle.holdout.x, _normalised(planes[:24], planes[:24]))
    np.testing.assert_array_equal(bundle.holdout.y.numpy(), labels[rows])


def test_cifar10_dir_without_batches(tmp_path):
    with pytest.raises(UserError, match="data_batch"):
        load_data(f"cifar10:{tmp_path}")


def _write_png(path, value, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(value + rng.integers(-20, 21, (8, 8, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


def test_imagefolder_with_train_and_test(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 3)):
        for cls, value in (("cat", 40), ("dog", 210)):
            for i in range(n):
                _write_png(tmp_path / split / cls / f"{i}.png", value, rng)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")

    bundle = load_data(f"imagefolder:{tmp_path}", holdout=2, seed=0)
    assert bundle.train.x.shape == (10, 3, 8, 8)
    assert bundle.holdout.x.shape == (2, 3, 8, 8)
    assert bundle.test.x.shape == (6, 3, 8, 8)
    assert bundle.num_classes == 2
    assert bundle.augment == ("crop",)
    assert bundle.test.y.tolist() == [0, 0, 0, 1, 1, 1]
    for split in (bundle.train, bundle.holdout, bundle.test):
        brightness = split.x.mean(dim=(1, 2, 3))
        assert torch.all((brightness > 0) == (split.y == 1))


def test_imagefolder_class_folders_get_a_seeded_fifth_as_test(tmp_path):
    rng = np.random.default_rng(3)
    for cls, value in (("a", 30), ("b", 220)):
        for i in range(10):
            _write_png(tmp_path / cls / f"{i}.png", value, rng)

    first = load_data(f"imagefolder:{tmp_path}", holdout=2, seed=0)
    again = load_data(f"imagefolder:{tmp_path}", holdout=2, seed=0)
    assert len(first.test) == 4
    assert len(first.train) + len(first.holdout) == 16
    assert first.num_classes == 2
    assert torch.equal(first.test.x, again.test.x)
    assert torch.equal(first.test.y, again.test.y)
    brightness = first.test.x.mean(dim=(1, 2, 3))
    assert torch.all((brightness > 0) == (first.test.y == 1))


def test_imagefolder_without_classes(tmp_path):
    with pytest.raises(UserError, match="no class sub-folders"):
        load_data(f"imagefolder:{tmp_path}")


def test_npz(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (30, 12, 12, 3), dtype=np.uint8),
        y_train=np.arange(30) % 4,
        x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    bundle = load_data(f"npz:{path}", holdout=5, seed=0)
    assert bundle.train.x.shape == (25, 3, 12, 12)
    assert bundle.holdout.x.shape == (5, 3, 12, 12)
    assert bundle.test.x.shape == (8, 3, 12, 12)
    assert bundle.test.y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert bundle.num_classes == 4
    assert bundle.augment == ()


def test_npz_missing_array(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4))
    with pytest.raises(UserError, match="x_test, y_test"):
        load_data(f"npz:{path}")


def test_factory_returning_a_dict(tmp_path):
    path = tmp_path / "dict_data.py"
    path.write_text(
        "import numpy as np\n"
        "def make():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return {'x_train': rng.random((20, 10, 10)), 'y_train': np.arange(20) % 3,\n"
        "            'x_test': rng.random((5, 10, 10)), 'y_test': np.arange(5) % 3}\n"
    )
    bundle = load_data(f"{path}:make", holdout=4, seed=0)
    assert bundle.train.x.shape == (16, 1, 10, 10)
    assert bundle.holdout.x.shape == (4, 1, 10, 10)
    assert bundle.test.x.shape == (5, 1, 10, 10)
    assert bundle.num_classes == 3
    assert bundle.augment == ()


def test_factory_returning_torch_datasets(tmp_path):
    path = tmp_path / "dataset_data.py"
    path.write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    train = TensorDataset(torch.rand(18, 2, 9, 9, generator=g), torch.arange(18) % 5)\n"
        "    test = TensorDataset(torch.rand(6, 2, 9, 9, generator=g), torch.arange(6) % 5)\n"
        "    return train, test\n"
    )
    bundle = load_data(f"{path}:make", holdout=3, seed=0)
    assert bundle.train.x.shape == (15, 2, 9, 9)
    assert bundle.holdout.x.shape == (3, 2, 9, 9)
    assert bundle.test.x.shape == (6, 2, 9, 9)
    assert bundle.test.y.tolist() == [0, 1, 2, 3, 4, 0]
    assert bundle.num_classes == 5


def test_factory_returning_something_else(tmp_path):
    path = tmp_path / "bad_data.py"
    path.write_text("def make():\n    return 42\n")
    with pytest.raises(UserError, match="must return"):
        load_data(f"{path}:make")


@pytest.mark.parametrize("spec", ["mnist", "mnist:/data"])
def test_unknown_source(spec):
    with pytest.raises(UserError) as err:
        load_data(spec)
    assert str(err.value) == ("unknown data 'mnist' (choose from cifar10, fashion-mnist, imagefolder, npz, synthetic, "
                              "or give package.module:factory / file.py:factory)")


def test_every_source_is_registered_with_what_it_needs():
    assert registry.list_data_sources() == ["cifar10", "fashion-mnist", "imagefolder", "npz", "synthetic"]
    sources = {name: registry.get_data_source(name) for name in registry.list_data_sources()}
    assert {name: (s.needs_arg, s.augment) for name, s in sources.items()} == {
        "cifar10": (True, ("crop", "flip")), "fashion-mnist": (False, ("crop", "flip")),
        "imagefolder": (True, ("crop",)), "npz": (True, ()), "synthetic": (False, ())}
    assert sources["npz"].obj is registry._npz and sources["npz"].name == "npz"
    assert sources["npz"].help == "an .npz file with arrays x_train, y_train, x_test, y_test"
    with pytest.raises(UserError, match="unknown data 'mnist'"):
        registry.get_data_source("mnist")


@pytest.mark.parametrize("name", ["cifar10", "imagefolder", "npz"])
def test_sources_that_need_a_path(name):
    with pytest.raises(UserError, match="needs a path"):
        load_data(name)


def test_augment_keeps_the_shape():
    x = torch.randn(5, 3, 12, 12)
    out = augment_batch(x, ("crop", "flip"), torch.Generator().manual_seed(0))
    assert out.shape == x.shape


def test_crop_pads_with_zeros_only_at_the_borders():
    x = torch.ones(16, 2, 12, 12)
    out = augment_batch(x, ("crop",), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    shifted = 0
    for sample in out:
        assert torch.equal(sample[0], sample[1])
        ones = sample[0] == 1
        rows, cols = ones.any(dim=1), ones.any(dim=0)
        assert torch.equal(ones, rows[:, None] & cols[None, :])
        for line in (rows, cols):
            kept = line.nonzero().flatten()
            assert len(kept) >= 8
            assert kept[-1] - kept[0] + 1 == len(kept)
            assert kept[0] == 0 or kept[-1] == 11
        shifted += int(not ones.all())
    assert shifted > 0


def test_flip_mirrors_some_samples():
    x = torch.arange(16 * 12 * 12, dtype=torch.float32).reshape(16, 1, 12, 12)
    out = augment_batch(x, ("flip",), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, s.flip(2)) for o, s in zip(out, x)]
    unchanged = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f != u for f, u in zip(flipped, unchanged))
    assert any(flipped) and any(unchanged)
