"""Registered data sources and the spec parser (``fashion-mnist``, ``cifar10:DIR``, ...)."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.data.bundle import DataBundle, make_bundle
from autoprune.errors import UserError
from autoprune.registry import Entry, Registry
from autoprune.specs import call_with_supported, is_callable_spec, load_callable

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


SOURCES: Registry[Callable[[str | None], Arrays]] = Registry(
    "data", alternatives="or give package.module:factory / file.py:factory")


def register_data(name: str, *, needs_arg: bool, augment: tuple[str, ...], help: str):
    """Register a loader ``fn(arg) -> (x_train, y_train, x_test, y_test)`` under ``name``: ``arg`` is what
    follows ``name:`` in the spec (None without it; ``needs_arg`` makes it required); ``augment`` names the
    training augmentations that suit the images (``crop``, ``flip``)."""
    return SOURCES.register(name, help, needs_arg=needs_arg, augment=augment)


def list_data_sources() -> list[str]:
    """The registered source names, sorted."""
    return SOURCES.names()


def get_data_source(name: str) -> Entry[Callable[[str | None], Arrays]]:
    """The source registered as ``name``: its loader (``obj``, spec argument -> x_train, y_train, x_test,
    y_test), ``needs_arg``, ``augment`` and ``help``; an unknown name is a ``UserError`` that lists the
    sources."""
    return SOURCES.get(name)


def load_data(spec: str, *, holdout: int = 5000, seed: int = 0, limit_train: int | None = None,
              limit_test: int | None = None) -> DataBundle:
    """Parse a data spec and load it. ``holdout`` images of the training set are set apart for scoring;
    ``limit_train`` / ``limit_test`` keep only the first N training / test images (quick runs).

    An unknown source, a missing path, or files and factories that do not hold the four arrays are a
    ``UserError``."""
    name, _, arg = spec.partition(":")
    if name not in SOURCES and is_callable_spec(spec):
        arrays, augment = _from_factory(spec), ()
    else:
        source = SOURCES.get(name)  # an unknown name raises the "unknown data" error
        if source.needs_arg and not arg:
            raise UserError(f"data '{spec}': '{name}' needs a path, as in '{name}:PATH'")
        arrays, augment = source.obj(arg or None), source.augment
    x_train = arrays[0]
    if holdout >= len(x_train):
        holdout = max(1, len(x_train) // 10)
    try:
        return make_bundle(
            spec, *arrays, holdout=holdout, seed=seed, augment=augment, limit_train=limit_train,
            limit_test=limit_test,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc


# --- Fashion-MNIST (gzipped IDX) ------------------------------------------------------------


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


@register_data(
    "fashion-mnist",
    needs_arg=False,
    augment=("crop", "flip"),
    help=f"Fashion-MNIST IDX files (default dir {FASHION_MNIST_DIR}; fashion-mnist:DIR for another)",
)
def _fashion_mnist(arg: str | None) -> Arrays:
    root = Path(arg or FASHION_MNIST_DIR).expanduser()
    files = {
        split: (root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz")
        for split in ("train", "t10k")
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        hint = f"; install it with: {FASHION_MNIST_HINT}" if arg is None else ""
        raise UserError(f"Fashion-MNIST not found in {root} (missing {missing[0]}){hint}")
    out = []
    for split in ("train", "t10k"):
        images, labels = files[split]
        y = _read_idx(labels, 8)
        x = _read_idx(images, 16).reshape(len(y), 28, 28)
        out += [x, y]
    return out[0], out[1], out[2], out[3]


# --- CIFAR-10 (python batches) ----------------------------------------------------------------


@register_data(
    "cifar10",
    needs_arg=True,
    augment=("crop", "flip"),
    help="CIFAR-10 python batches directory (data_batch_1..5, test_batch)",
)
def _cifar10(arg: str | None) -> Arrays:
    root = Path(arg or "").expanduser()
    if not root.is_dir():
        raise UserError(f"CIFAR-10 directory {root} not found")
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.is_file():
        raise UserError(f"{root} does not hold CIFAR-10 python batches (data_batch_*, test_batch)")

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as fh:
            # The CIFAR-10 python format is a pickled dict of arrays; it is the user's own file.
            batch = pickle.load(fh, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels)

    parts = [read(p) for p in train_files]
    x_test, y_test = read(test_file)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        x_test,
        y_test,
    )


# --- image folders ----------------------------------------------------------------------------

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@register_data(
    "imagefolder",
    needs_arg=True,
    augment=("crop",),
    help="DIR/train/<class>/*.png and DIR/test/<class>/*.png (or DIR/<class>/ with a seeded 20%% test split)",
)
def _imagefolder(arg: str | None) -> Arrays:
    from PIL import Image

    root = Path(arg or "").expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} not found")
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        test_root = root / "test" if (root / "test").is_dir() else root / "val"
        splits = {"train": root / "train", "test": test_root}
    else:
        splits = {"all": root}
    classes = sorted(p.name for p in next(iter(splits.values())).iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders")
    size: tuple[int, int] | None = None
    mode: str | None = None
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, split_root in splits.items():
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for path in sorted((split_root / cls).iterdir()) if (split_root / cls).is_dir() else []:
                if path.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                with Image.open(path) as img:
                    if mode is None:
                        mode = "L" if img.mode in ("L", "1", "I;16") else "RGB"
                        size = img.size
                    img = img.convert(mode)
                    if img.size != size:
                        img = img.resize(size)
                    xs.append(np.asarray(img, dtype=np.uint8))
                ys.append(label)
        if not xs:
            raise UserError(f"image folder {split_root} holds no images")
        images = np.stack(xs)
        loaded[split] = (images.transpose(0, 3, 1, 2) if images.ndim == 4 else images, np.asarray(ys))
    if "all" in loaded:
        x, y = loaded["all"]
        order = np.random.default_rng(0).permutation(len(y))
        n_test = max(1, len(y) // 5)
        test, train = order[:n_test], order[n_test:]
        return x[train], y[train], x[test], y[test]
    return (*loaded["train"], *loaded["test"])  # type: ignore[return-value]


# --- npz ----------------------------------------------------------------------------------------


@register_data(
    "npz",
    needs_arg=True,
    augment=(),
    help="an .npz file with arrays x_train, y_train, x_test, y_test",
)
def _npz(arg: str | None) -> Arrays:
    path = Path(arg or "").expanduser()
    if not path.is_file():
        raise UserError(f"npz file {path} not found")
    with np.load(path, allow_pickle=False) as npz:
        return _arrays_from_mapping(dict(npz), f"npz:{path}")


# --- synthetic (random images for latency and structure) ----------------------------------------

SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES = 256, 64, 1000
_SYNTHETIC_MAX_VALUES = 2**28  # the training images' float32 values: at most 1 GiB
_SYNTHETIC_FORM = "synthetic:CxHxW or synthetic:CxHxW:CLASSES, as in synthetic:3x224x224"


@register_data(
    "synthetic",
    # False only so that a bare 'synthetic' gets the loader's "needs a shape", not load_data's "needs a path".
    needs_arg=False,
    augment=(),
    help=f"random images for latency and structure only, accuracy on them means nothing: "
         f"synthetic:CxHxW[:CLASSES] gives {SYNTHETIC_TRAIN} training and {SYNTHETIC_TEST} test images of "
         f"standard-normal noise with random labels (default {SYNTHETIC_CLASSES} classes), the same every time",
)
def _synthetic(arg: str | None) -> Arrays:
    if not arg:
        raise UserError(f"data 'synthetic' needs an image shape: {_SYNTHETIC_FORM}")
    spec = f"synthetic:{arg}"
    shape_text, _, classes_text = arg.partition(":")
    dims = shape_text.lower().split("x")
    if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
        raise UserError(f"data '{spec}': the shape must be three positive integers CxHxW ({_SYNTHETIC_FORM})")
    if classes_text and not (classes_text.isdigit() and int(classes_text) > 0):
        raise UserError(f"data '{spec}': CLASSES must be a positive integer, not '{classes_text}'")
    shape = tuple(int(d) for d in dims)
    if shape[2] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        # make_bundle takes (N, A, B, W) with W of 1, 3 or 4 and A of none of them for channels-last images
        raise UserError(f"data '{spec}': a width of {shape[2]} with {shape[0]} channels reads as channels-last "
                        "(HxWxC); give C as 1, 3 or 4 or a width other than those")
    classes = int(classes_text) if classes_text else SYNTHETIC_CLASSES
    if SYNTHETIC_TRAIN * np.prod(shape) > _SYNTHETIC_MAX_VALUES:
        raise UserError(f"data '{spec}': {SYNTHETIC_TRAIN} images of {shape_text} would take "
                        f"{SYNTHETIC_TRAIN * np.prod(shape) * 4 / 2**30:.1f} GiB; the limit is 1 GiB")
    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((SYNTHETIC_TRAIN, *shape), dtype=np.float32)
    x_test = rng.standard_normal((SYNTHETIC_TEST, *shape), dtype=np.float32)
    y_train = rng.integers(0, classes, SYNTHETIC_TRAIN)
    y_test = rng.integers(0, classes, SYNTHETIC_TEST)
    y_test[-1] = classes - 1  # the class count is read off the largest label: make it CLASSES
    return x_train, y_train, x_test, y_test


# --- user factories -----------------------------------------------------------------------------


def _from_factory(spec: str) -> Arrays:
    fn = load_callable(spec, "data")
    result = call_with_supported(fn)
    if isinstance(result, dict):
        return _arrays_from_mapping(result, spec)
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return (*_materialise(result[0], spec), *_materialise(result[1], spec))  # type: ignore[return-value]
    if isinstance(result, (tuple, list)) and len(result) == 4:
        return tuple(np.asarray(_numpy(a)) for a in result)  # type: ignore[return-value]
    raise UserError(
        f"data '{spec}': the factory must return a dict with x_train, y_train, x_test, y_test, "
        "a 4-tuple of those arrays, or a (train, test) pair of torch Datasets"
    )


def _arrays_from_mapping(mapping: dict[str, Any], spec: str) -> Arrays:
    keys = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise UserError(f"data '{spec}': missing arrays {', '.join(missing)}")
    return tuple(np.asarray(_numpy(mapping[k])) for k in keys)  # type: ignore[return-value]


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _materialise(dataset: Any, spec: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = [dataset[i] for i in range(len(dataset))]
    except Exception as exc:
        raise UserError(f"data '{spec}': cannot read the returned dataset: {exc}") from exc
    xs = [_numpy(x) for x, _ in items]
    ys = [int(y) for _, y in items]
    return np.stack(xs), np.asarray(ys)
