"""The :class:`DataBundle` every dataset loads into, the dataset registry, and batch iteration."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry

__all__ = ["DATASETS", "DataBundle", "iterate_batches", "load_dataset", "make_bundle"]


@dataclass(frozen=True)
class DataBundle:
    """The three splits of one dataset, plus what a model needs to know about it.

    Attributes:
        name: The registry name of the dataset.
        train: What candidate architectures train on.
        val: Held out from the *training* data; used for scoring, Fisher information and the
            retained pool, so search decisions never see the test split.
        test: The official test split, only for final reporting.
        num_classes: Number of target classes; labels are ``0 .. num_classes - 1``.
        input_shape: Shape of one input sample: ``(C, L)`` for 1-D data, ``(C, H, W)`` for images,
            ``(T,)`` for token sequences.
        metric: How candidates are scored: ``accuracy`` (higher is better) or, for language
            data, ``perplexity`` (lower is better); see :mod:`wpl_nas.evaluation.scoring`.
    """

    name: str
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    num_classes: int
    input_shape: tuple[int, ...]
    metric: str = "accuracy"


#: Dataset loaders by name. Each is called as
#: ``loader(data_dir=Path, download=bool, val_fraction=float, seed=int)`` and returns a :class:`DataBundle`.
DATASETS: Registry[Callable[..., DataBundle]] = Registry("dataset")


def check_val_fraction(val_fraction: float) -> None:
    """Raise :class:`ConfigError` unless ``0 < val_fraction < 1``."""
    # Written as a negated range test so NaN is rejected too.
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), but got val_fraction={val_fraction}")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_samples: int = 0,
) -> DataBundle:
    """Load a registered dataset by name.

    Args:
        name: A name in :data:`DATASETS` (``"mnist1d"``, ``"mnist"``, ``"fashion_mnist"``,
            ``"cifar10"``, ``"cifar100"``).
        data_dir: Where dataset files live (and caches are written).
        download: Whether torchvision datasets may be downloaded when missing.
        val_fraction: Fraction of the training data held out as the validation split.
        seed: Seed of the train/validation split.
        train_samples: Keep only the first N samples of the training split (0: all of them); the
            validation and test splits are unchanged. Less data makes architectures differ more.

    Returns:
        The loaded :class:`DataBundle`.

    Raises:
        ConfigError: Unknown ``name``, ``val_fraction`` outside (0, 1), or missing files.
    """
    loader = DATASETS.get(name)
    # Checked before loading so a typo does not cost a (possibly slow) load first.
    check_val_fraction(val_fraction)
    if train_samples < 0:
        raise ConfigError(f"train_samples must be >= 0 (0: all), but got {train_samples=}")
    bundle = loader(data_dir=Path(data_dir), download=download, val_fraction=val_fraction, seed=seed)
    if train_samples:
        if not isinstance(bundle.train, TensorDataset):
            raise ConfigError(f"train_samples needs a data set held in memory; {name!r} is not")
        bundle = dataclasses.replace(bundle, train=TensorDataset(*(t[:train_samples] for t in bundle.train.tensors)))
    return bundle


def make_bundle(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
) -> DataBundle:
    """Split ``train`` into train/validation at random and wrap everything as a :class:`DataBundle`.

    Args:
        name: The dataset's registry name.
        train: ``(inputs, labels)`` of the official training split, inputs already normalised.
        test: ``(inputs, labels)`` of the official test split.
        num_classes: Number of classes.
        val_fraction: Fraction of ``train`` moved to the validation split, in (0, 1).
        seed: Seed of the split; the same seed always gives the same split.

    Raises:
        ConfigError: ``val_fraction`` is outside (0, 1) or leaves one of the splits empty.
    """
    check_val_fraction(val_fraction)
    x, y = train
    n_train = len(x)
    n_val = round(val_fraction * n_train)
    if not 0 < n_val < n_train:
        raise ConfigError(
            f"val_fraction={val_fraction} of {n_train} training samples leaves an empty "
            f"train or validation split for dataset {name!r}"
        )
    # A private generator: the split depends on ``seed`` only, never on the global torch RNG.
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return DataBundle(
        name=name,
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]),
        test=TensorDataset(*test),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
    )


def iterate_batches(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    limit: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, labels)`` batches from ``dataset``, one pass.

    A two-tensor :class:`TensorDataset` is sliced a whole batch at a time (no per-sample
    collation: this is the training hot path); any other dataset goes through a
    :class:`DataLoader` with the same semantics.

    Args:
        dataset: The dataset to iterate over.
        batch_size: Samples per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: Visit the samples in a random order (each exactly once).
        generator: Source of randomness for ``shuffle``; the global torch RNG when ``None``.
            The same seeded generator state gives the same batches.
        drop_last: Skip a final batch smaller than ``batch_size``.
        limit: Yield at most this many batches.

    Raises:
        ConfigError: ``batch_size`` < 1 or ``limit`` < 0 (raised at the call, not on first use).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, but got batch_size={batch_size}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be non-negative, but got limit={limit}")
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        # Drawn now, not on first use, so the generator advances at a predictable point.
        order = torch.randperm(len(x), generator=generator) if shuffle else None
        batches = _tensor_batches(x, y, order, batch_size, drop_last)
    else:
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
        )
        batches = ((x, y) for x, y in loader)
    return itertools.islice(batches, limit)


def _tensor_batches(
    x: Tensor, y: Tensor, order: Tensor | None, batch_size: int, drop_last: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    """Slice batches from ``x``/``y``, in ``order`` if given; unshuffled slices are copy-free views."""
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size].to(x.device)
            yield x[idx], y[idx]
