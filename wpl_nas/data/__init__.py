"""Datasets: ``load_dataset(name)`` returns a :class:`DataBundle`.

Most splits are held in memory: a ``TensorDataset(inputs_float32, labels_int64)`` with normalised
inputs (MNIST-1D, text, your own tensors), or, for the torchvision image data sets, uint8 images
normalised per batch on the device (``ImageTensors``, in ``_images.py``); :func:`iterate_batches`
slices whole batches out of either. ``imagefolder`` is read lazily from image files and streamed
to the trainer by worker processes (``_imagefolder.py``, ``_stream.py``). The validation split is
carved from the training data, so search decisions never look at the test split.

A dataset is one module: a module of this package that registers a loader with
:func:`register_dataset` is found by :data:`DATASETS` with no other edit (so are plugins: entry
point group ``wpl_nas.datasets``). Your own data: :meth:`DataBundle.from_tensors`.
"""

from __future__ import annotations

from wpl_nas.data._bundle import (
    DATASETS,
    RECIPES,
    DataBundle,
    Recipe,
    Statistics,
    iterate_batches,
    load_dataset,
    recipe_for,
    register_dataset,
)

__all__ = ["DATASETS", "RECIPES", "DataBundle", "Recipe", "Statistics", "iterate_batches", "load_dataset", "recipe_for",
           "register_dataset"]
