"""MNIST-1D, generated locally (no download) and cached on disk.

Generation with the default arguments takes about 2 s (plus ~1 s to import ``mnist1d``), so
the arrays are cached under ``<data_dir>/mnist1d/`` keyed by a hash of the generation
arguments and the ``mnist1d`` version.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wpl_nas.data._bundle import DataBundle, Recipe, make_bundle, register_dataset
from wpl_nas.tracking.checkpoint import save_checkpoint

__all__ = ["load_mnist1d"]

_NUM_CLASSES = 10


@register_dataset("mnist1d", recipe=Recipe(lr=0.05, weight_decay=5e-4, batch_size=64))
def load_mnist1d(
    *, data_dir: Path, download: bool = False, val_fraction: float = 0.2, seed: int = 0
) -> DataBundle:
    """Load MNIST-1D with its default arguments: 4000 train / 1000 test sequences of shape (1, 40).

    Args:
        data_dir: Directory for the cache (``<data_dir>/mnist1d/mnist1d-<hash>.pt``).
        download: Ignored: MNIST-1D is always generated locally.
        val_fraction: Fraction of the training data held out as the validation split.
        seed: Seed of the train/validation split (the data itself is always the same).
    """
    del download  # Accepted for a uniform loader signature only.
    arrays = _load_or_generate(Path(data_dir) / "mnist1d")
    # (N, 40) -> (N, 1, 40): one channel, so 1-D convolutions apply directly.
    return make_bundle(
        "mnist1d",
        (arrays["x"].unsqueeze(1), arrays["y"]),
        (arrays["x_test"].unsqueeze(1), arrays["y_test"]),
        num_classes=_NUM_CLASSES,
        val_fraction=val_fraction,
        seed=seed,
    )


def _load_or_generate(cache_dir: Path) -> dict[str, Tensor]:
    # Imported here: mnist1d pulls in scipy and matplotlib (~1 s), which only this dataset needs.
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    settings = {key: value for key, value in vars(args).items() if key != "url"}
    settings["mnist1d_version"] = version("mnist1d")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"mnist1d-{digest}.pt"
    if path.exists():
        arrays: dict[str, Tensor] = torch.load(path, weights_only=True)
        return arrays
    arrays = _generate(args)
    _save_atomically(arrays, path)
    return arrays


def _generate(args: Any) -> dict[str, Tensor]:
    from mnist1d.data import make_dataset

    # make_dataset reseeds the global numpy and ``random`` generators; restore them so that
    # loading data never changes the caller's random streams.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x": torch.from_numpy(data["x"]).float(),
        "y": torch.from_numpy(data["y"]).long(),
        "x_test": torch.from_numpy(data["x_test"]).float(),
        "y_test": torch.from_numpy(data["y_test"]).long(),
    }


def _save_atomically(arrays: dict[str, Tensor], path: Path) -> None:
    try:
        save_checkpoint(path, arrays)
    except OSError as error:
        # The cache only saves time; an unwritable data directory must not stop a run.
        warnings.warn(f"could not cache MNIST-1D at {path}: {error}", stacklevel=2)
