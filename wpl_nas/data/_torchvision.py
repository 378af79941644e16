"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read with torchvision and kept as tensors.

torchvision's own dataset classes find, verify and (optionally) download the files; the
images are then kept as one uint8 ``(N, C, H, W)`` tensor with the data set's per-channel
statistics (:class:`~wpl_nas.data._images.ImageTensors`, a quarter of a float32 copy's size),
so training indexes whole batches, on the device, and normalises each one there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wpl_nas.data._bundle import DataBundle, Recipe, make_bundle, register_dataset
from wpl_nas.errors import ConfigError, reason

__all__ = ["load_torchvision_dataset"]


@dataclass(frozen=True)
class _Spec:
    """How to read one torchvision dataset (its class name and per-channel statistics) and retrain on it."""

    class_name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: Recipe


_PLAIN = Recipe(lr=0.05, weight_decay=5e-4, batch_size=128)
# The usual recipe of the NAS literature.
_CIFAR = Recipe(lr=0.1, weight_decay=5e-4, batch_size=128, augment=True)
# The usual per-channel mean/std of each training set, on the [0, 1] pixel scale.
_SPECS = {
    "mnist": _Spec("MNIST", 10, (0.1307,), (0.3081,), _PLAIN),
    "fashion_mnist": _Spec("FashionMNIST", 10, (0.2860,), (0.3530,), _PLAIN),
    "cifar10": _Spec("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR),
    "cifar100": _Spec("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR),
}


def load_torchvision_dataset(
    name: str, *, data_dir: Path, download: bool = False, val_fraction: float = 0.2, seed: int = 0
) -> DataBundle:
    """Load one of the torchvision datasets in ``_SPECS`` as a :class:`DataBundle`.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"cifar100"``.
        data_dir: torchvision ``root`` (e.g. ``<data_dir>/MNIST/raw/``, ``<data_dir>/cifar-10-batches-py/``).
        download: Let torchvision download missing files.
        val_fraction: Fraction of the training data held out as the validation split.
        seed: Seed of the train/validation split.

    Raises:
        ConfigError: The files are missing (or corrupted) and ``download`` is false.
    """
    # Imported lazily: torchvision (and PIL) are only needed for these datasets.
    import torchvision.datasets

    spec = _SPECS[name]
    dataset_class = getattr(torchvision.datasets, spec.class_name)
    splits = []
    for train in (True, False):
        try:
            dataset = dataset_class(root=str(data_dir), train=train, download=download)
        except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
            if download:
                raise ConfigError(
                    f"could not download dataset {name!r} into '{data_dir}' ({reason(error, limit=200)}); "
                    "check the network, or download its files on another machine and copy them into that "
                    "directory, then run without --download") from None
            if not isinstance(error, RuntimeError):
                raise
            raise ConfigError(
                f"dataset {name!r} not found (or corrupted) in data directory '{data_dir}'; "
                "pass --download to fetch it, or --data-dir to point at the directory that holds it"
            ) from error
        splits.append((_images(dataset.data), torch.as_tensor(dataset.targets, dtype=torch.int64)))
    return make_bundle(
        name,
        splits[0],
        splits[1],
        num_classes=spec.num_classes,
        val_fraction=val_fraction,
        seed=seed,
        normalisation=(spec.mean, spec.std),
    )


def _images(data: Any) -> Tensor:
    """uint8 images, (N, H, W) tensor (MNIST) or (N, H, W, C) array (CIFAR) -> uint8 (N, C, H, W), contiguous."""
    images = torch.from_numpy(data).permute(0, 3, 1, 2) if isinstance(data, np.ndarray) else data.unsqueeze(1)
    return images.contiguous()


for _name, _spec in _SPECS.items():
    register_dataset(_name, recipe=_spec.recipe)(functools.partial(load_torchvision_dataset, _name))
