"""The :class:`DataBundle` every dataset loads into, the dataset registry and its retraining
recipes, and batch iteration."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from wpl_nas.data._images import ImageTensors
from wpl_nas.errors import ConfigError
from wpl_nas.registry import Registry

__all__ = ["DATASETS", "RECIPES", "DataBundle", "Recipe", "Statistics", "in_memory", "iterate_batches", "load_dataset",
           "make_bundle", "on_device", "recipe_for", "register_dataset", "take"]

#: ``(mean, std)`` per channel on the [0, 1] scale: what a data set normalises its images with.
Statistics = tuple[tuple[float, ...], tuple[float, ...]]

#: What :meth:`DataBundle.from_tensors` takes as tensors: a tensor, a NumPy array, or a nested list.
TensorLike = Tensor | np.ndarray[Any, Any] | list[Any]


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
        statistics: The per-channel ``(mean, std)`` this load normalises with when the loader
            *measured* them on the files (``imagefolder``), None for fixed statistics or none. A run
            records them and gives them back to its later loads (``load_dataset(..., statistics=)``),
            which then normalise exactly as the first did, without measuring again.
    """

    name: str
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    num_classes: int
    input_shape: tuple[int, ...]
    metric: str = "accuracy"
    statistics: Statistics | None = None

    @classmethod
    def from_tensors(
        cls,
        x_train: TensorLike,
        y_train: TensorLike,
        *,
        x_test: TensorLike | None = None,
        y_test: TensorLike | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        name: str = "custom",
        metric: str = "accuracy",
        num_classes: int | None = None,
    ) -> DataBundle:
        """A bundle of data you hold in memory: the way to search your own data.

        ::

            bundle = DataBundle.from_tensors(x, y, x_test=x_test, y_test=y_test, seed=0)

        Register a function that returns it (:func:`register_dataset`) to search it by name.
        The inputs are used as given: scale them first (e.g. to zero mean and unit variance,
        with statistics of the training data).

        Args:
            x_train: Training inputs, one sample per row: ``(N, C, L)`` sequences, ``(N, C, H, W)``
                images, or an ``(N, F)`` table of features, which is read as ``(N, 1, F)`` (one
                channel of ``F`` values: what ``mlp`` and 1-D spaces take). Converted to float32.
                With ``metric="perplexity"``: ``(N, T)`` integer token ids.
            y_train: Class labels ``0 .. num_classes - 1``, shape ``(N,)``; with
                ``metric="perplexity"``, the next tokens, shape ``(N, T)``.
            x_test: Test inputs, only for final reporting (``wpl-nas retrain``).
            y_test: Their labels; give both or neither.
            val_fraction: Fraction of the training data held out (at random) as the validation
                split, on which candidates are scored.
            test_fraction: Without ``x_test``, the fraction of ``x_train`` held out (at random,
                before the validation split) as the test split.
            seed: Seed of the random splits; the same seed always gives the same splits.
            name: The dataset's name in messages (:func:`load_dataset` sets it to the registered name).
            metric: ``accuracy`` (classification) or ``perplexity`` (language modelling).
            num_classes: Number of classes (the vocabulary size for ``perplexity``) [default: the
                largest label (or token id) + 1].

        Raises:
            ConfigError: mismatched lengths, labels that are not integer classes, an unknown
                ``metric``, only one of ``x_test``/``y_test``, or a fraction that leaves a split empty.
        """
        from wpl_nas.evaluation import METRICS  # imports supernets, which import this module

        METRICS.get(metric)
        tokens = metric == "perplexity"
        x, y = _as_samples(x_train, y_train, tokens=tokens, what="x_train/y_train")
        if (x_test is None) != (y_test is None):
            raise ConfigError(f"dataset {name!r}: give both x_test and y_test, or neither")
        if x_test is not None and y_test is not None:
            test = _as_samples(x_test, y_test, tokens=tokens, what="x_test/y_test")
        else:
            (x, y), test = _split(x, y, test_fraction, seed, f"test_fraction of dataset {name!r}")
        labels = torch.cat([t.flatten() for t in (x, y, *test)]) if tokens else torch.cat([y, test[1]])
        found = int(labels.max()) + 1 if len(labels) else 0
        if num_classes is None:
            num_classes = found
        elif num_classes < found:
            raise ConfigError(f"dataset {name!r}: num_classes={num_classes}, but a label (or token id) is {found - 1}")
        bundle = make_bundle(name, (x, y), test, num_classes=num_classes, val_fraction=val_fraction, seed=seed)
        return dataclasses.replace(bundle, metric=metric)


def _as_samples(x_in: TensorLike, y_in: TensorLike, *, tokens: bool, what: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` as :meth:`DataBundle.from_tensors` stores them, checked."""
    x, y = torch.as_tensor(x_in), torch.as_tensor(y_in)
    if len(x) != len(y):
        raise ConfigError(f"{what}: {len(x)} inputs but {len(y)} labels")
    for tensor, role in [(y, "labels"), (x, "token ids")] if tokens else [(y, "labels")]:
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ConfigError(f"{what}: {role} must be integers (class indices), but they are {tensor.dtype}")
        if len(tensor) and int(tensor.min()) < 0:
            raise ConfigError(f"{what}: {role} must be >= 0, but one is {int(tensor.min())}")
    if tokens:
        if x.dim() != 2 or x.shape != y.shape:
            raise ConfigError(f"{what}: token data must be (N, T) inputs and (N, T) next tokens, but got "
                              f"{tuple(x.shape)} and {tuple(y.shape)}")
        return x.long(), y.long()
    if y.dim() != 1:
        raise ConfigError(f"{what}: labels must be one class index per sample, shape (N,), but got {tuple(y.shape)}")
    if x.dim() < 2:
        raise ConfigError(f"{what}: inputs must have one row per sample, shape (N, ...), but got {tuple(x.shape)}")
    x = x.float()
    return (x.unsqueeze(1) if x.dim() == 2 else x), y.long()


def _split(x: Tensor, y: Tensor, fraction: float, seed: int,
           what: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x, y) kept, (x, y) held out)``: ``fraction`` of the samples at random, seeded."""
    kept, out = seeded_split(len(x), fraction, seed, what)
    return (x[kept], y[kept]), (x[out], y[out])


def seeded_split(n: int, fraction: float, seed: int, what: str) -> tuple[Tensor, Tensor]:
    """``(kept, held out)`` indices of ``n`` samples: ``fraction`` of them held out at random, seeded.

    Raises:
        ConfigError: ``fraction`` outside (0, 1), or one that leaves a side empty (``what`` names it).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"{what} must be in (0, 1), but got {fraction}")
    n_out = round(fraction * n)
    if not 0 < n_out < n:
        raise ConfigError(f"{what}={fraction} of {n} samples leaves an empty split")
    # A private generator: the split depends on ``seed`` only, never on the global torch RNG.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_out:], order[:n_out]


@dataclass(frozen=True)
class Recipe:
    """How ``wpl-nas retrain`` trains an architecture from scratch on a dataset.

    Attributes:
        lr: Peak learning rate (cosine-annealed to 0 over the run).
        weight_decay: SGD weight decay.
        batch_size: Training batch size.
        augment: Random crop (4-pixel zero padding) and horizontal flip of images.
        momentum: SGD momentum (Nesterov when not 0).
        grad_clip: Global gradient-norm clip (0: off).
    """

    lr: float
    weight_decay: float
    batch_size: int
    augment: bool = False
    momentum: float = 0.9
    grad_clip: float = 0.0


#: Dataset loaders by name: this package's modules (``wpl_nas/data/*.py``) and plugins (entry point
#: group ``wpl_nas.datasets``) register theirs with :func:`register_dataset`.
DATASETS: Registry[Callable[..., DataBundle]] = Registry("dataset", package=__package__,
                                                         entry_points="wpl_nas.datasets")
#: The retraining recipe of each dataset registered with one (look one up with :func:`recipe_for`,
#: which loads the plugins first).
RECIPES: dict[str, Recipe] = {}

Loader = TypeVar("Loader", bound=Callable[..., DataBundle])


def register_dataset(name: str, *, recipe: Recipe | None = None) -> Callable[[Loader], Loader]:
    """Register a function that returns a :class:`DataBundle` as dataset ``name``.

    ::

        @wpl_nas.register_dataset("my-data", recipe=wpl_nas.Recipe(lr=0.05, weight_decay=5e-4, batch_size=64))
        def my_data(*, val_fraction: float, seed: int) -> wpl_nas.DataBundle:
            return wpl_nas.DataBundle.from_tensors(x, y, val_fraction=val_fraction, seed=seed)

    Once the module that does this is imported (or installed as a plugin, or dropped into
    ``wpl_nas/data/``), the name works wherever a dataset is named: ``wpl-nas search --dataset
    my-data``, ``SearchConfig(dataset="my-data")``, ``SupernetObjective(dataset="my-data")``,
    :func:`load_dataset`.

    The function is called with keyword arguments, those of the following that it accepts:
    ``data_dir`` (:class:`~pathlib.Path`, where data files live: ``--data-dir``), ``download``
    (bool: whether it may download missing files: ``--download``), ``val_fraction`` (float in
    (0, 1): the fraction of the training data to hold out for validation), ``seed`` (int: the
    seed of that split) and ``image_size`` (int: the side of square images decoded from files:
    ``--image-size``). Honour ``val_fraction`` and ``seed`` (pass them to
    :meth:`DataBundle.from_tensors`), so the options of a search mean what they say.

    Args:
        name: The dataset's name.
        recipe: How ``wpl-nas retrain`` trains an architecture on it from scratch; without one it
            cannot be retrained.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(loader: Loader) -> Loader:
        DATASETS.add(name, loader)
        if recipe is not None:
            RECIPES[name] = recipe
        return loader

    return decorator


def recipe_for(name: str) -> Recipe:
    """The retraining recipe of dataset ``name``.

    Raises:
        ConfigError: unknown dataset, or one registered without a recipe.
    """
    DATASETS.get(name)  # loads the plugins, whose recipes register with their datasets
    if name not in RECIPES:
        raise ConfigError(f"no retraining recipe for dataset {name!r}; recipes: {', '.join(RECIPES)} (register one "
                          "with wpl_nas.register_dataset(name, recipe=wpl_nas.Recipe(...)))")
    return RECIPES[name]


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
    image_size: int = 32,
    statistics: Statistics | None = None,
) -> DataBundle:
    """Load a registered dataset by name.

    Args:
        name: A name in :data:`DATASETS`: ``"mnist1d"``, ``"mnist"``, ``"fashion_mnist"``,
            ``"cifar10"``, ``"cifar100"``, ``"ptb"``, or one registered with :func:`register_dataset`.
        data_dir: Where dataset files live (and caches are written).
        download: Whether torchvision datasets may be downloaded when missing.
        val_fraction: Fraction of the training data held out as the validation split.
        seed: Seed of the train/validation split.
        train_samples: Keep only the first N samples of the training split (0: all of them); the
            validation and test splits are unchanged. Less data makes architectures differ more.
        image_size: Side of the square images of data sets decoded from image files (``imagefolder``);
            offered, like the others, only to loaders that take an ``image_size`` argument.
        statistics: The ``(mean, std)`` an earlier load measured (its bundle's ``statistics``, as the
            run folder records them): offered to loaders that take a ``statistics`` argument, which
            then use them rather than measure the files again [default: measured when needed].

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
    offered = {"data_dir": Path(data_dir), "download": download, "val_fraction": val_fraction, "seed": seed,
               "image_size": image_size}
    if statistics is not None:  # only then: a loader taking **kwargs has never been given it
        offered["statistics"] = statistics
    parameters = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        offered = {key: value for key, value in offered.items() if key in parameters}
    bundle = loader(**offered)
    if not isinstance(bundle, DataBundle):
        raise TypeError(f"dataset {name!r}: its loader returned {type(bundle).__name__}, not a DataBundle")
    if bundle.name != name:
        bundle = dataclasses.replace(bundle, name=name)
    if train_samples:
        train = bundle.train
        if isinstance(train, TensorDataset):
            train = TensorDataset(*(t[:train_samples] for t in train.tensors))
        elif callable(getattr(train, "subset", None)):  # ImageTensors, and the lazy splits of image files
            train = train.subset(slice(None, train_samples))  # type: ignore[attr-defined]
        else:
            raise ConfigError(f"train_samples needs a data set held in memory or read from image files; {name!r} "
                              "is neither")
        bundle = dataclasses.replace(bundle, train=train)
    return bundle


def make_bundle(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> DataBundle:
    """Split ``train`` into train/validation at random and wrap everything as a :class:`DataBundle`.

    Args:
        name: The dataset's registry name.
        train: ``(inputs, labels)`` of the official training split, inputs already normalised
            (or uint8 images, with ``normalisation``).
        test: ``(inputs, labels)`` of the official test split.
        num_classes: Number of classes.
        val_fraction: Fraction of ``train`` moved to the validation split, in (0, 1).
        seed: Seed of the split; the same seed always gives the same split.
        normalisation: ``(mean, std)`` per channel on the [0, 1] scale when the inputs are uint8
            ``(N, C, H, W)`` images: every split is then an :class:`ImageTensors`, normalised per batch.

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
    if normalisation is None:
        splits: list[Dataset[Any]] = [TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]),
                                      TensorDataset(*test)]
    else:
        mean, std = normalisation
        splits = [ImageTensors(x[idx], y[idx], mean=mean, std=std) for idx in (train_idx, val_idx)]
        splits.append(ImageTensors(*test, mean=mean, std=std))
    return DataBundle(
        name=name,
        train=splits[0],
        val=splits[1],
        test=splits[2],
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
    collation: this is the training hot path), and so is an :class:`ImageTensors`, whose uint8
    batches are normalised where they live; any other dataset goes through a :class:`DataLoader`
    with the same semantics.

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
    elif isinstance(dataset, ImageTensors):
        order = torch.randperm(len(dataset), generator=generator) if shuffle else None
        batches = ((dataset.normalise(x), y) for x, y in _tensor_batches(dataset.images, dataset.labels, order,
                                                                          batch_size, drop_last))
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
    if order is not None and order.device != x.device:
        # The whole permutation goes to the device once per epoch, without waiting for it (pinned first,
        # so the copy is truly asynchronous); a copy per batch would synchronise every step on CUDA.
        order = (order.pin_memory() if x.is_cuda else order).to(x.device, non_blocking=True)
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def in_memory(dataset: Dataset[Any]) -> bool:
    """Whether ``dataset`` is held in memory and sliced whole batches at a time: a two-tensor
    :class:`TensorDataset` or an :class:`ImageTensors` (anything else is read sample by sample)."""
    return (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2) or isinstance(dataset, ImageTensors)


def on_device(dataset: Dataset[Any], device: torch.device) -> Dataset[Any]:
    """``dataset`` where training reads it: an in-memory one (a two-tensor :class:`TensorDataset`, an
    :class:`ImageTensors`) moved to ``device`` whole, once; any other (read lazily, e.g. from image
    files) as it is, to be streamed batch by batch."""
    if isinstance(dataset, ImageTensors):
        return dataset.to(device)
    if in_memory(dataset):
        return TensorDataset(*(t.to(device) for t in dataset.tensors))  # type: ignore[attr-defined]
    return dataset


def take(dataset: Dataset[Any], indices: Tensor, *, device: torch.device | str = "cpu",
         batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of the samples at ``indices`` (a 1-D integer tensor), normalised, on ``device``.

    In-memory data sets are indexed whole (uint8 images normalised on ``device``); any other is read
    sample by sample through a :class:`DataLoader` of ``batch_size`` (for the few samples of a fixed
    evaluation set or a batch norm calibration).
    """
    device = torch.device(device)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        idx = indices.to(x.device)
        return x[idx].to(device), y[idx].to(device)
    if isinstance(dataset, ImageTensors):
        idx = indices.to(dataset.images.device)
        return dataset.normalise(dataset.images[idx].to(device)), dataset.labels[idx].to(device)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size)
    parts = [(x, y) for x, y in loader]
    if not parts:
        raise ConfigError("no samples to take: the split is empty")
    return torch.cat([x for x, _ in parts]).to(device), torch.cat([y for _, y in parts]).to(device)
