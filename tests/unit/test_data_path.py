"""The data path of issue 15: image files streamed (``imagefolder``), batches in a seeded order
whatever the number of workers, and augmentation drawn from the trainer's generator."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import counting_decodes
from torch.utils.data import TensorDataset

import wpl_nas
from wpl_nas.data import iterate_batches, load_dataset
from wpl_nas.data._bundle import take
from wpl_nas.data._imagefolder import ImageFiles
from wpl_nas.data._stream import StreamedBatches
from wpl_nas.errors import ConfigError
from wpl_nas.training.augment import augment_crop_flip

CLASSES, PER_CLASS, SIZE = 3, 8, 12  # what the image_dir fixture writes (tests/conftest.py)


def _paths(files: object) -> list[str]:
    assert isinstance(files, ImageFiles)
    return [path for path, _ in files.samples]


def test_imagefolder_loads_lazy_splits_of_the_right_shapes_and_classes(image_dir):
    data = load_dataset("imagefolder", data_dir=image_dir, val_fraction=0.25, seed=0, image_size=SIZE)

    assert (data.num_classes, data.input_shape) == (CLASSES, (3, SIZE, SIZE))
    assert all(isinstance(split, ImageFiles) for split in (data.train, data.val, data.test))
    assert (len(_paths(data.train)), len(_paths(data.val)), len(_paths(data.test))) == (18, 6, 9)
    assert set(_paths(data.train)).isdisjoint(_paths(data.val))  # val is carved out of train
    assert all("/train/" in p for p in _paths(data.train) + _paths(data.val))
    assert all("/test/" in p for p in _paths(data.test))
    x, y = data.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE) and 0 <= y < CLASSES
    # The statistics are measured on the whole train folder (fewer images than STAT_SAMPLES): normalised
    # with them, its pixels have mean 0 and standard deviation 1 per channel.
    pixels = torch.cat([take(split, torch.arange(len(split)))[0] for split in (data.train, data.val)])
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(pixels.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-3)
    # Another size: resized (and centre-cropped) on reading.
    small = load_dataset("imagefolder", data_dir=image_dir, image_size=8)
    assert small.input_shape == (3, 8, 8) and small.train[0][0].shape == (3, 8, 8)


def test_without_a_test_folder_a_seeded_fraction_of_train_is_held_out(tmp_path, write_images):
    root = write_images(tmp_path / "images", test=False)

    first = load_dataset("imagefolder", data_dir=root, val_fraction=0.25, seed=1)
    again = load_dataset("imagefolder", data_dir=root, val_fraction=0.25, seed=1)
    other = load_dataset("imagefolder", data_dir=root, val_fraction=0.25, seed=2)

    splits = [_paths(first.train), _paths(first.val), _paths(first.test)]
    assert [len(s) for s in splits] == [14, 5, 5]  # 20% of 24 held out as test, then 25% of 19 as val
    assert len(set().union(*splits)) == CLASSES * PER_CLASS  # disjoint, and every image is somewhere
    assert [_paths(again.train), _paths(again.val), _paths(again.test)] == splits
    assert _paths(other.test) != splits[2]
    # The statistics are the data's, not the seed's.
    assert torch.equal(first.train.mean, other.train.mean)  # type: ignore[attr-defined]


def test_train_samples_keeps_the_first_training_images(image_dir):
    whole = load_dataset("imagefolder", data_dir=image_dir)
    part = load_dataset("imagefolder", data_dir=image_dir, train_samples=5)
    assert _paths(part.train) == _paths(whole.train)[:5]
    assert _paths(part.val) == _paths(whole.val)


def test_bad_folders_and_sizes_are_refused(tmp_path, image_dir, write_images):
    with pytest.raises(ConfigError, match="has no class folders"):
        load_dataset("imagefolder", data_dir=tmp_path / "nowhere")
    odd = write_images(tmp_path / "odd", test=False)
    write_images(tmp_path / "odd_test", test=False, classes=2)
    (tmp_path / "odd_test" / "train").rename(odd / "test")
    with pytest.raises(ConfigError, match="differ from those of"):
        load_dataset("imagefolder", data_dir=odd)
    with pytest.raises(ConfigError, match="image_size must be at least 1"):
        load_dataset("imagefolder", data_dir=image_dir, image_size=0)


def test_statistics_given_back_are_used_as_they_are_without_decoding_a_sample(tmp_path, write_images):
    root = write_images(tmp_path / "images")
    with counting_decodes() as first_load:
        first = load_dataset("imagefolder", data_dir=root, image_size=SIZE)
    assert first_load[0] == CLASSES * PER_CLASS  # every train image is in the sample (fewer than STAT_SAMPLES)
    assert first.statistics is not None and len(first.statistics[0]) == 3
    # The files change (brighter images); given the first load's statistics, a load decodes nothing
    # and normalises with them: the same tensors as the first load's for the same files.
    x, y = first.train[0]
    write_images(tmp_path / "images", seed=1)
    with counting_decodes() as again_load:
        again = load_dataset("imagefolder", data_dir=root, image_size=SIZE, statistics=first.statistics)
    assert again_load[0] == 0
    assert again.statistics == first.statistics
    assert torch.equal(again.train.mean, first.train.mean) and torch.equal(again.test.std, first.test.std)  # type: ignore[attr-defined]
    assert torch.equal(again.val.mean, first.val.mean)  # type: ignore[attr-defined]
    measured = load_dataset("imagefolder", data_dir=root, image_size=SIZE)
    assert measured.statistics != first.statistics  # measured afresh, the changed files would normalise otherwise
    assert y == again.train[0][1] and not torch.equal(x, again.train[0][0])  # the pixels changed, not the rule


@pytest.mark.parametrize("statistics", [
    ((0.5, 0.5), (0.2, 0.2)),                           # 2 channels for RGB images
    ((0.5, 0.5, float("nan")), (0.2, 0.2, 0.2)),        # not finite
    ((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)),                 # std 0 would divide by zero
    ((0.5, 0.5, 0.5), (0.2, float("inf"), 0.2)),
])
def test_statistics_given_back_out_of_range_are_refused_by_name(image_dir, statistics):
    with pytest.raises(ConfigError, match=r"imagefolder: the recorded statistics must .*mean=\[0.5"):
        load_dataset("imagefolder", data_dir=image_dir, statistics=statistics)


def test_statistics_are_none_for_data_sets_whose_statistics_are_fixed(mnist1d):
    assert mnist1d.statistics is None


def _labels(batches: object) -> list[list[int]]:
    return [y.tolist() for _, y in batches]  # type: ignore[attr-defined]


def test_streamed_batches_come_in_the_given_order_whatever_the_workers(image_dir):
    data = load_dataset("imagefolder", data_dir=image_dir)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(5))  # type: ignore[arg-type]
    expected = [take(data.train, part) for part in torch.split(order, 4)]
    for workers in (0, 2):
        stream = StreamedBatches(data.train, workers=workers, device=torch.device("cpu"))
        for _ in range(2):  # a second epoch reuses the (persistent) workers
            got = list(stream.batches(order, batch_size=4))
            assert len(got) == len(expected)
            for (x, y), (ex, ey) in zip(got, expected, strict=True):
                assert torch.equal(y, ey) and torch.equal(x, ex)  # normalised on the device as when read whole
        assert len(list(stream.batches(order, batch_size=4, limit=2))) == 2


def _trainer(data: wpl_nas.DataBundle, space_file: Path, *, workers: int, augment: bool = False):
    options = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=4, grad_clip=5.0,
                              eval_batch_size=64, workers=workers, augment=augment)
    parts = wpl_nas.assemble(wpl_nas.build_supernet(str(space_file), data, seed=0), options, device="cpu")
    return parts.trainer_for(data, epochs=1, seed=3, eval_samples=4)


def test_the_trainers_batch_order_is_a_function_of_seed_and_position(image_dir, tiny_2d_space_file):
    space_file = tiny_2d_space_file
    data = load_dataset("imagefolder", data_dir=image_dir)
    trainer = _trainer(data, space_file, workers=0)

    def order(position: int) -> list[list[int]]:
        return _labels(trainer.batches(trainer.train_set, batch_size=4, generator=trainer._generator(position, 0)))

    assert order(0) == order(0)
    assert order(0) != order(1)
    # The same batches as the data held in memory would give: one permutation from the same generator.
    in_memory = take(data.train, torch.arange(len(data.train)))  # type: ignore[arg-type]
    memory_batches = iterate_batches(TensorDataset(*in_memory), batch_size=4, shuffle=True,
                                     generator=trainer._generator(0, 0))
    assert order(0) == _labels(memory_batches)


def test_training_on_streamed_images_is_the_same_with_and_without_workers(image_dir, tiny_2d_space_file):
    space_file = tiny_2d_space_file
    data = load_dataset("imagefolder", data_dir=image_dir)
    space = wpl_nas.load_space(space_file)
    arch = space.make(dict.fromkeys(space.choices, "nor_conv_3x3"))
    results = []
    for workers in (0, 2):
        trainer = _trainer(data, space_file, workers=workers, augment=True)
        result = trainer.train(arch, trial_index=0)
        trainer.consolidate(arch, trial_index=0, score=result.score)
        results.append((result.loss, result.score, [p.detach().clone() for p in trainer.supernet.parameters()]))
    assert results[0][:2] == results[1][:2]
    assert all(torch.equal(a, b) for a, b in zip(results[0][2], results[1][2], strict=True))


# ----------------------------------------------------------------------------------- augmentation


def test_augmentation_is_drawn_from_the_generator_changes_the_batch_and_keeps_its_shape():
    x = torch.randn(16, 3, 8, 8)
    first = augment_crop_flip(x, torch.Generator().manual_seed(0))
    again = augment_crop_flip(x, torch.Generator().manual_seed(0))
    other = augment_crop_flip(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, x) and not torch.equal(first, other)


def test_augment_on_data_that_is_not_images_is_refused(mnist1d, tiny_space):
    options = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=64, grad_clip=5.0,
                              eval_batch_size=256, augment=True)
    parts = wpl_nas.assemble(wpl_nas.build_supernet(tiny_space, mnist1d, seed=0), options, device="cpu")
    with pytest.raises(ConfigError, match=r"augment .* needs images.*\(1, 40\).*--no-augment"):
        parts.trainer_for(mnist1d, epochs=1, seed=0)
