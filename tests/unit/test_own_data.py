"""Bring your own data: ``DataBundle.from_tensors`` and ``register_dataset``, then a search of it by name
and a retraining with its recipe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import OWN_RECIPE, blobs

import wpl_nas
from wpl_nas.data import DATASETS, recipe_for
from wpl_nas.errors import ConfigError


def test_a_feature_table_becomes_three_seeded_splits() -> None:
    x, y = blobs()
    bundle = wpl_nas.DataBundle.from_tensors(x, y, seed=1)
    assert (bundle.num_classes, bundle.input_shape, bundle.metric) == (4, (1, 8), "accuracy")
    sizes = [len(split) for split in (bundle.train, bundle.val, bundle.test)]  # type: ignore[arg-type]
    assert sizes == [320, 80, 100]  # test_fraction 0.2 of 500, then val_fraction 0.2 of the rest
    rows = [{tuple(r) for r in split.tensors[0].squeeze(1).tolist()} for split in  # type: ignore[attr-defined]
            (bundle.train, bundle.val, bundle.test)]
    assert sum(map(len, rows)) == len(set.union(*rows)) == 500  # disjoint, and together every sample
    x_train, y_train = bundle.train.tensors  # type: ignore[attr-defined]
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    again = wpl_nas.DataBundle.from_tensors(x, y, seed=1)
    assert torch.equal(again.val.tensors[0], bundle.val.tensors[0])  # type: ignore[attr-defined]
    other = wpl_nas.DataBundle.from_tensors(x, y, seed=2)
    assert not torch.equal(other.val.tensors[0], bundle.val.tensors[0])  # type: ignore[attr-defined]


def test_a_given_test_split_is_kept_whole_and_images_keep_their_shape() -> None:
    images, labels = torch.rand(50, 3, 4, 4), torch.arange(50) % 5
    bundle = wpl_nas.DataBundle.from_tensors(images[:40], labels[:40], x_test=images[40:], y_test=labels[40:],
                                             val_fraction=0.25, name="pics")
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("pics", 5, (3, 4, 4))
    assert [len(s) for s in (bundle.train, bundle.val, bundle.test)] == [30, 10, 10]  # type: ignore[arg-type]
    assert torch.equal(bundle.test.tensors[0], images[40:])  # type: ignore[attr-defined]


def test_token_sequences_for_language_modelling() -> None:
    stream = torch.arange(181) % 13
    x, y = stream[:-1].reshape(20, 9), stream[1:].reshape(20, 9)  # next-token targets
    bundle = wpl_nas.DataBundle.from_tensors(x, y, metric="perplexity")
    assert (bundle.metric, bundle.num_classes, bundle.input_shape) == ("perplexity", 13, (9,))
    assert bundle.train.tensors[0].dtype == torch.int64  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "message"), [
    ({"y_train": np.zeros(499)}, "500 inputs but 499 labels"),
    ({"y_train": np.full(500, 0.5)}, "labels must be integers"),
    ({"y_train": np.full(500, -1)}, "labels must be >= 0, but one is -1"),
    ({"x_test": np.zeros((5, 8))}, "give both x_test and y_test"),
    ({"metric": "f1"}, r"unknown metric 'f1'.*accuracy, perplexity"),
    ({"num_classes": 3}, "num_classes=3, but a label"),
    ({"val_fraction": 0.0}, "val_fraction must be in"),
    ({"test_fraction": 1.0}, "test_fraction of dataset 'custom' must be in"),
    ({"x_train": np.zeros(500)}, r"shape \(N, \.\.\.\)"),
])
def test_bad_tensors_name_the_problem(change: dict[str, Any], message: str) -> None:
    x, y = blobs()
    arguments: dict[str, Any] = {"x_train": x, "y_train": y, **change}
    with pytest.raises(ConfigError, match=message):
        wpl_nas.DataBundle.from_tensors(arguments.pop("x_train"), arguments.pop("y_train"), **arguments)


def test_a_registered_dataset_loads_by_name_with_its_recipe(own_data: str) -> None:
    bundle = wpl_nas.load_dataset(own_data, val_fraction=0.5, seed=3)
    assert bundle.name == own_data  # the registered name, whatever the loader called it
    assert len(bundle.val) == 200  # type: ignore[arg-type]
    assert recipe_for(own_data) is OWN_RECIPE
    with pytest.raises(ValueError, match="already registered"):
        wpl_nas.register_dataset(own_data)(lambda: None)


def test_a_dataset_without_a_recipe_cannot_be_retrained_and_a_loader_must_return_a_bundle() -> None:
    wpl_nas.register_dataset("test-no-recipe")(lambda **_: 42)
    with pytest.raises(ConfigError, match=r"no retraining recipe for dataset 'test-no-recipe'.*register_dataset"):
        recipe_for("test-no-recipe")
    with pytest.raises(TypeError, match="'test-no-recipe': its loader returned int, not a DataBundle"):
        wpl_nas.load_dataset("test-no-recipe")
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        recipe_for("nope")
    assert "test-no-recipe" in DATASETS  # registered names stay for the process, like a user's


