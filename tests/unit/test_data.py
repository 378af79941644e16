"""Tests for ``wpl_nas.data``: dataset loading, the train/val split, and batch iteration.

The torchvision datasets are tested on tiny files written here in their real on-disk formats,
so torchvision's own reading code runs without any download.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import pickle
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets
from torch.utils.data import Dataset, TensorDataset

from wpl_nas.assembly import evaluation_set
from wpl_nas.data import DATASETS, DataBundle, Recipe, iterate_batches, load_dataset, recipe_for
from wpl_nas.data._bundle import take
from wpl_nas.data._images import ImageTensors
from wpl_nas.errors import ConfigError


def _rows(dataset: Dataset[Any]) -> set[bytes]:
    """The input rows of a TensorDataset as hashable bytes, to compare splits by content."""
    assert isinstance(dataset, TensorDataset)
    return {row.numpy().tobytes() for row in dataset.tensors[0]}


def _tensors(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, ImageTensors):  # uint8 images: read normalised, as every consumer reads them
        return take(dataset, torch.arange(len(dataset)))
    assert isinstance(dataset, TensorDataset)
    x, y = dataset.tensors
    return x, y


def _n(dataset: Dataset[Any]) -> int:
    return len(_tensors(dataset)[0])


# --------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_can_be_loaded_by_load_dataset_and_retrained(name: str) -> None:
    # load_dataset offers these keywords (only those a loader accepts); any other must have a default.
    offered = {"data_dir", "download", "val_fraction", "seed"}
    for p in inspect.signature(DATASETS.get(name)).parameters.values():
        assert p.name in offered or p.default is not p.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL), p
    assert isinstance(recipe_for(name), Recipe)


def test_unknown_dataset_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid choices") as info:
        load_dataset("imagenet", data_dir=tmp_path)
    assert "'imagenet'" in str(info.value)
    for name in DATASETS.names():
        assert name in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_bad_val_fraction(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"val_fraction={fraction}")):
        load_dataset("mnist1d", data_dir=tmp_path, val_fraction=fraction)


# ---------------------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module, so MNIST-1D is generated once and then read from cache."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def mnist1d(mnist1d_dir: Path) -> DataBundle:
    return load_dataset("mnist1d", data_dir=mnist1d_dir)


def test_mnist1d_sizes_shapes_dtypes(mnist1d: DataBundle) -> None:
    assert mnist1d.name == "mnist1d"
    assert mnist1d.num_classes == 10
    assert mnist1d.input_shape == (1, 40)
    assert _n(mnist1d.train) + _n(mnist1d.val) == 4000
    assert _n(mnist1d.val) == 800
    assert _n(mnist1d.test) == 1000
    for split in (mnist1d.train, mnist1d.val, mnist1d.test):
        x, y = _tensors(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 40)
        assert len(x) == len(y)
        assert int(y.min()) >= 0 and int(y.max()) < 10


def test_mnist1d_train_val_disjoint(mnist1d: DataBundle) -> None:
    train, val = _rows(mnist1d.train), _rows(mnist1d.val)
    assert not train & val
    assert len(train | val) == 4000  # together they are the whole training set
    assert not (train | val) & _rows(mnist1d.test)


def test_mnist1d_split_is_seeded(mnist1d_dir: Path, mnist1d: DataBundle) -> None:
    again = load_dataset("mnist1d", data_dir=mnist1d_dir, seed=0)
    for a, b in ((mnist1d.train, again.train), (mnist1d.val, again.val), (mnist1d.test, again.test)):
        for ta, tb in zip(_tensors(a), _tensors(b), strict=True):
            assert torch.equal(ta, tb)
    other = load_dataset("mnist1d", data_dir=mnist1d_dir, seed=1)
    assert _rows(other.val) != _rows(mnist1d.val)
    assert torch.equal(_tensors(other.test)[0], _tensors(mnist1d.test)[0])  # test split never moves


def test_mnist1d_val_fraction(mnist1d_dir: Path) -> None:
    bundle = load_dataset("mnist1d", data_dir=mnist1d_dir, val_fraction=0.25)
    assert _n(bundle.val) == 1000
    assert _n(bundle.train) == 3000


def test_mnist1d_generation_keeps_global_rng_and_caches(tmp_path: Path, mnist1d: DataBundle) -> None:
    def draws() -> tuple[float, list[float]]:
        return random.random(), np.random.random(3).tolist()

    random.seed(123)
    np.random.seed(123)
    expected = draws()
    random.seed(123)
    np.random.seed(123)

    fresh = load_dataset("mnist1d", data_dir=tmp_path)  # an empty directory: generates

    assert draws() == expected  # mnist1d reseeds both global generators; the loader restores them
    # Exactly one complete cache file (no temp file left behind), holding the same data.
    assert [p.name for p in (tmp_path / "mnist1d").iterdir()] == [
        p.name for p in (tmp_path / "mnist1d").glob("mnist1d-*.pt")
    ]
    assert len(list((tmp_path / "mnist1d").iterdir())) == 1
    for a, b in ((fresh.train, mnist1d.train), (fresh.test, mnist1d.test)):
        assert torch.equal(_tensors(a)[0], _tensors(b)[0])


# ---------------------------------------------------------------------- torchvision, tiny files

# The usual per-channel statistics the loaders must normalise with: x = (pixel / 255 - mean) / std.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format: magic (0, 0, type 0x08, ndim), then big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, train: list[int], test: list[int]) -> None:
    """Write the four raw IDX files; every pixel of an image is ``20 * label``."""
    for prefix, labels in (("train", train), ("t10k", test)):
        images = np.repeat(20 * np.array(labels, dtype=np.uint8), 28 * 28).reshape(-1, 28, 28)
        _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", np.array(labels, dtype=np.uint8))


def _cifar_batch(labels: list[int], label_key: str) -> dict[str, object]:
    """A CIFAR batch: each row holds R, G and B planes of 1024 bytes; channel c is ``label + 50 c``."""
    pixels = np.array(labels, dtype=np.uint8)[:, None] + 50 * np.arange(3, dtype=np.uint8)[None, :]
    return {"data": np.repeat(pixels, 1024, axis=1), label_key: labels}


def _pickle(path: Path, obj: object) -> list[str]:
    """Pickle ``obj`` to ``path``; return ``[file name, md5]`` as torchvision's file lists hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return [path.name, hashlib.md5(path.read_bytes()).hexdigest()]


# Per CIFAR variant: folder, training files, test file, label key, meta file, meta key.
_CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],  # the training set ships in five files
        "test_batch",
        "labels",
        "batches.meta",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", "meta", "fine_label_names"),
}


def _write_cifar(
    root: Path, monkeypatch: pytest.MonkeyPatch, name: str, train: list[int], test: list[int]
) -> None:
    """Write CIFAR-10/100 python-pickle files and point torchvision's md5 checks at them."""
    folder, train_names, test_name, label_key, meta_name, meta_key = _CIFAR_LAYOUT[name]
    directory = root / folder
    chunks = [train[i :: len(train_names)] for i in range(len(train_names))]
    train_list = [
        _pickle(directory / file, _cifar_batch(chunk, label_key))
        for file, chunk in zip(train_names, chunks, strict=True)
    ]
    test_list = [_pickle(directory / test_name, _cifar_batch(test, label_key))]
    meta_file, meta_md5 = _pickle(directory / meta_name, {meta_key: [f"class{i}" for i in range(100)]})
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {"filename": meta_file, "key": meta_key, "md5": meta_md5})


def _check_images(
    bundle: DataBundle, train: list[int], test: list[int], pixel: Callable[[int, int], int]
) -> None:
    """Check labels, dtypes and normalisation of images built so that every value is ``pixel(label, c)``."""
    mean, std = _STATS[bundle.name]
    x_train, y_train = _tensors(bundle.train)
    x_val, y_val = _tensors(bundle.val)
    x_test, y_test = _tensors(bundle.test)
    # train + val is a permutation of the written training set; the test split keeps its order.
    assert sorted(torch.cat([y_train, y_val]).tolist()) == sorted(train)
    assert y_test.tolist() == test
    for x, y in ((x_train, y_train), (x_val, y_val), (x_test, y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == bundle.input_shape
        for c in range(len(mean)):
            low, high = (0.0 - mean[c]) / std[c], (1.0 - mean[c]) / std[c]
            assert low - 1e-5 <= float(x[:, c].min()) and float(x[:, c].max()) <= high + 1e-5
            # Images still match their labels after the split, channel by channel (CIFAR's HWC -> CHW).
            expected = torch.tensor([(pixel(int(label), c) / 255.0 - mean[c]) / std[c] for label in y])
            assert torch.allclose(x[:, c], expected[:, None, None].expand_as(x[:, c]), atol=1e-5)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    train, test = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [5, 8, 9, 7, 9]
    _write_mnist(tmp_path, folder, train, test)

    bundle = load_dataset(name, data_dir=tmp_path, seed=3)

    assert (bundle.name, bundle.num_classes, bundle.input_shape) == (name, 10, (1, 28, 28))
    assert (_n(bundle.train), _n(bundle.val), _n(bundle.test)) == (8, 2, 5)
    _check_images(bundle, train, test, lambda label, c: 20 * label)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_pickled_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, num_classes: int
) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, num_classes, 15).tolist(), rng.integers(0, num_classes, 4).tolist()
    _write_cifar(tmp_path, monkeypatch, name, train, test)

    bundle = load_dataset(name, data_dir=tmp_path, seed=3)

    assert (bundle.name, bundle.num_classes, bundle.input_shape) == (name, num_classes, (3, 32, 32))
    assert (_n(bundle.train), _n(bundle.val), _n(bundle.test)) == (12, 3, 4)
    _check_images(bundle, train, test, lambda label, c: label + 50 * c)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_files_say_how_to_get_them(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="--download") as info:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert name in str(info.value)
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "--data-dir" in str(info.value)
    assert not (tmp_path / "nowhere").exists()  # nothing is created or downloaded


# ---------------------------------------------------------------------------------- iterate_batches


def _numbered(n: int) -> TensorDataset:
    """Sample i has input [i, -i] and label i, so batches can be checked for consistency."""
    i = torch.arange(n)
    return TensorDataset(torch.stack([i, -i], dim=1).float(), i)


class _ListDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A plain map-style dataset (not a TensorDataset), to exercise the DataLoader fallback."""

    def __init__(self, n: int) -> None:
        self.inner = _numbered(n)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner[index]


def _labels(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    for x, y in batches:
        assert torch.equal(x[:, 0].long(), y) and torch.equal(x[:, 1].long(), -y)  # inputs travel with labels
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("make", [_numbered, _ListDataset], ids=["tensor", "fallback"])
def test_batches_in_order(make: Callable[[int], Dataset[Any]]) -> None:
    batches = list(iterate_batches(make(10), batch_size=4))
    assert _labels(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    for n in (10, 8):  # a partial last batch is dropped; a full one is kept
        dropped = list(iterate_batches(make(n), batch_size=4, drop_last=True))
        assert _labels(dropped) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("make", [_numbered, _ListDataset], ids=["tensor", "fallback"])
def test_shuffle_covers_every_sample_once(make: Callable[[int], Dataset[Any]]) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = _labels(list(iterate_batches(make(23), batch_size=5, shuffle=True, generator=generator)))
    assert [len(b) for b in labels] == [5, 5, 5, 5, 3]
    flat = [label for batch in labels for label in batch]
    assert sorted(flat) == list(range(23))
    assert flat != list(range(23))


@pytest.mark.parametrize("make", [_numbered, _ListDataset], ids=["tensor", "fallback"])
def test_shuffle_is_deterministic_given_the_generator(make: Callable[[int], Dataset[Any]]) -> None:
    def epoch(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return _labels(list(iterate_batches(make(50), batch_size=8, shuffle=True, generator=generator)))

    assert epoch(7) == epoch(7)
    assert epoch(7) != epoch(8)
    # Successive passes with one generator give fresh orders.
    generator = torch.Generator().manual_seed(7)
    first = _labels(list(iterate_batches(make(50), batch_size=8, shuffle=True, generator=generator)))
    second = _labels(list(iterate_batches(make(50), batch_size=8, shuffle=True, generator=generator)))
    assert first == epoch(7) and second != first


@pytest.mark.parametrize("make", [_numbered, _ListDataset], ids=["tensor", "fallback"])
def test_limit(make: Callable[[int], Dataset[Any]]) -> None:
    assert _labels(list(iterate_batches(make(10), batch_size=3, limit=2))) == [[0, 1, 2], [3, 4, 5]]
    assert list(iterate_batches(make(10), batch_size=3, limit=0)) == []
    assert len(list(iterate_batches(make(10), batch_size=3, limit=100))) == 4
    generator = torch.Generator().manual_seed(0)
    shuffled = list(iterate_batches(make(10), batch_size=3, shuffle=True, generator=generator, limit=1))
    assert [len(b) for b in _labels(shuffled)] == [3]


def test_fallback_matches_tensor_path_when_not_shuffling() -> None:
    fast = list(iterate_batches(_numbered(11), batch_size=4))
    slow = list(iterate_batches(_ListDataset(11), batch_size=4))
    for (xf, yf), (xs, ys) in zip(fast, slow, strict=True):
        assert torch.equal(xf, xs) and torch.equal(yf, ys)


def test_bad_batch_arguments() -> None:
    with pytest.raises(ConfigError, match="batch_size=0"):
        iterate_batches(_numbered(4), batch_size=0)
    with pytest.raises(ConfigError, match="limit=-1"):
        iterate_batches(_numbered(4), batch_size=2, limit=-1)


def test_train_samples_keeps_the_first_n_of_the_training_split_only(data_dir):
    whole = load_dataset("mnist1d", data_dir=data_dir)
    part = load_dataset("mnist1d", data_dir=data_dir, train_samples=100)
    assert len(part.train) == 100  # type: ignore[arg-type]
    for a, b in zip(part.train.tensors, whole.train.tensors, strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b[:100])
    for a, b in zip(part.val.tensors, whole.val.tensors, strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="train_samples"):
        load_dataset("mnist1d", data_dir=data_dir, train_samples=-1)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_download_that_cannot_reach_the_network_is_one_clear_error(name, tmp_path, monkeypatch):
    """torchvision's real download code, sent through a proxy that refuses every connection."""
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: nothing listens
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=f"could not download dataset '{name}'.*without --download"):
        load_dataset(name, data_dir=tmp_path / "data", download=True)


# ------------------------------------------------------------ uint8 images, normalised per batch


def _precomputed(images: torch.Tensor, name: str) -> torch.Tensor:
    """The normalisation the loaders applied once to the whole split before issue 15."""
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in _STATS[name])
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_torchvision_images_are_kept_as_uint8_and_normalised_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    train, test = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 0, 7], [5, 8, 9, 7]
    if name == "mnist":
        _write_mnist(tmp_path, "MNIST", train, test)
    else:
        _write_cifar(tmp_path, monkeypatch, name, train, test)

    bundle = load_dataset(name, data_dir=tmp_path, seed=3)

    for split in (bundle.train, bundle.val, bundle.test):
        assert isinstance(split, ImageTensors) and split.images.dtype == torch.uint8  # a quarter of float32
    stored = bundle.train
    assert isinstance(stored, ImageTensors)
    expected = _precomputed(stored.images, name)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(stored), generator=torch.Generator().manual_seed(0))
    batches = list(iterate_batches(stored, batch_size=5, shuffle=True, generator=generator))
    for (x, y), idx in zip(batches, torch.split(order, 5), strict=True):
        assert x.dtype == torch.float32
        assert torch.equal(x, expected[idx]) and torch.equal(y, stored.labels[idx])  # bit-identical to before
    # One sample, a DataLoader and the fixed evaluation set read it normalised too.
    assert torch.equal(stored[2][0], expected[2])
    loaded = next(iter(torch.utils.data.DataLoader(stored, batch_size=len(stored))))[0]
    assert torch.equal(loaded, expected)
    eval_x, _ = evaluation_set(bundle, samples=2, device=torch.device("cpu"))
    assert isinstance(bundle.val, ImageTensors)
    assert torch.equal(eval_x, _precomputed(bundle.val.images[:2], name))
    # train_samples keeps the first images, still uint8.
    part = load_dataset(name, data_dir=tmp_path, seed=3, train_samples=4)
    assert isinstance(part.train, ImageTensors) and torch.equal(part.train.images, stored.images[:4])
