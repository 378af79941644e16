"""Datasets as in-memory tensors: ``load_dataset(name)`` returns a :class:`DataBundle`.

Every split is a ``TensorDataset(inputs_float32, labels_int64)`` with normalised inputs, and
:func:`iterate_batches` slices whole batches out of it. The validation split is carved from
the training data, so search decisions never look at the test split.
"""

from __future__ import annotations

# Imported for their side effect: each module registers its loaders in DATASETS.
from wpl_nas.data import _mnist1d, _text, _torchvision  # noqa: F401
from wpl_nas.data._bundle import DATASETS, DataBundle, iterate_batches, load_dataset

__all__ = ["DATASETS", "DataBundle", "iterate_batches", "load_dataset"]
