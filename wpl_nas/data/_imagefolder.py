"""``imagefolder``: a directory of image files, read lazily (for data that does not fit in memory).

::

    PATH/train/<class>/<image files>     required: one folder per class (torchvision's ImageFolder)
    PATH/test/<class>/<image files>      optional: without it, a seeded fraction of train is the test split

``wpl-nas search --dataset imagefolder --data-dir PATH --image-size 32 --workers 4``. Every image is
resized (shorter side) and centre-cropped to ``image_size`` x ``image_size`` RGB. The validation split
is carved from train by ``val_fraction`` and ``seed``, as for every data set. The per-channel
statistics are measured on a fixed sample of the ``train`` folder's images (the first
:data:`STAT_SAMPLES` of a permutation seeded by 0, before any split: a property of the data, the
same for every run seed), once per run: the bundle carries them (``DataBundle.statistics``), the
run folder records them, and every later load of the run (resume, ``export``, ``anatomy``,
``rank``, ...) is given them back, so it decodes no sample and normalises exactly as the search
did, even if files in the folder have changed since.

The splits are :class:`ImageFiles`: lists of files decoded on demand, by the trainer's
:class:`~wpl_nas.data._stream.StreamedBatches` worker processes, batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from wpl_nas.data._bundle import DataBundle, Recipe, Statistics, register_dataset, seeded_split
from wpl_nas.data._images import normalise_images
from wpl_nas.errors import ConfigError

__all__ = ["STAT_SAMPLES", "ImageFiles", "load_imagefolder"]

#: Training images on which the per-channel mean and standard deviation are measured.
STAT_SAMPLES = 1000
#: The fraction of train held out as the test split when there is no ``test`` folder (as
#: :meth:`DataBundle.from_tensors` does).
TEST_FRACTION = 0.2


class _Pixels(Dataset[tuple[Tensor, int]]):
    """An :class:`ImageFiles` read as uint8 ``(C, H, W)`` pixels (what the workers send)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.files.read(index)


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """Image files and their classes, decoded when read: ``dataset[i]`` is a normalised float32
    ``(3, image_size, image_size)`` image and its class; :meth:`pixels` reads the raw uint8 images
    (the streaming path, which normalises whole batches on the device).

    Args:
        samples: ``(path, class)`` of every image.
        image_size: Side of the square images.
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, image_size: int, mean: Sequence[float] | Tensor,
                 std: Sequence[float] | Tensor) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[Tensor, int]:
        """Image ``index`` as uint8 ``(3, image_size, image_size)``, and its class."""
        from PIL import Image  # only this data set needs PIL
        from torchvision.transforms import functional as TF

        path, label = self.samples[index]
        with Image.open(path) as image:
            image = TF.center_crop(TF.resize(image.convert("RGB"), self.image_size), self.image_size)
            return TF.pil_to_tensor(image), label

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        pixels, label = self.read(index)
        return normalise_images(pixels, self.mean, self.std), label

    def pixels(self) -> Dataset[tuple[Tensor, int]]:
        """This data set read as uint8 pixels, not normalised."""
        return _Pixels(self)

    def subset(self, index: Tensor | slice) -> ImageFiles:
        """The images at ``index``: a slice, or a 1-D tensor of indices."""
        chosen = self.samples[index] if isinstance(index, slice) else [self.samples[i] for i in index.tolist()]
        return ImageFiles(chosen, image_size=self.image_size, mean=self.mean, std=self.std)


def _folder(root: Path, split: str, classes: list[str] | None) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of ``root/split`` read as a torchvision ImageFolder (no decoding yet)."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root / split))
    except (FileNotFoundError, OSError) as error:
        raise ConfigError(f"imagefolder: {root / split} has no class folders with image files ({error}); it must "
                          "hold <class>/<image files> (e.g. train/cat/001.png)") from None
    if classes is not None and folder.classes != classes:
        raise ConfigError(f"imagefolder: the class folders of {root / split} ({', '.join(folder.classes)}) differ "
                          f"from those of {root / 'train'} ({', '.join(classes)})")
    return [(path, int(label)) for path, label in folder.samples], folder.classes


def _statistics(images: ImageFiles) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of up to :data:`STAT_SAMPLES` images, on the [0, 1] scale."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:STAT_SAMPLES]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in order.tolist():
        pixels = images.read(i)[0].to(torch.float64).div_(255.0).flatten(1)  # (3, H * W)
        total += pixels.sum(1)
        squares += pixels.square().sum(1)
        count += pixels.shape[1]
    mean = total / count
    # Clamped: a channel of one colour would divide by zero.
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _checked(statistics: Statistics) -> Statistics:
    """Statistics given back by a run (read from its folder: untrusted) for this data set's RGB images.

    Raises:
        ConfigError: not one finite mean and one finite, positive std per channel (3).
    """
    mean, std = (tuple(values) for values in statistics)
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"imagefolder: the recorded statistics must give 3 channels (RGB), but got "
                          f"mean={list(mean)}, std={list(std)}")
    if not all(isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) for v in (*mean, *std)) \
            or min(std) <= 0:
        raise ConfigError(f"imagefolder: the recorded statistics must be finite with std > 0, but got "
                          f"mean={list(mean)}, std={list(std)}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@register_dataset("imagefolder", recipe=Recipe(lr=0.1, weight_decay=5e-4, batch_size=128, augment=True))
def load_imagefolder(*, data_dir: Path, val_fraction: float = 0.2, seed: int = 0, image_size: int = 32,
                     statistics: Statistics | None = None) -> DataBundle:
    """A directory of image files as a :class:`DataBundle` of lazy :class:`ImageFiles` splits (see the
    module docstring).

    Args:
        data_dir: The folder of ``train/`` (and ``test/``).
        val_fraction: Fraction of train held out as the validation split.
        seed: Seed of the splits.
        image_size: Side of the square images.
        statistics: The ``(mean, std)`` a run measured when it first loaded the folder [default:
            measured now, decoding up to :data:`STAT_SAMPLES` images].

    Raises:
        ConfigError: no ``train`` folder of class folders, a ``test`` folder with other classes, an
            ``image_size`` below 1, too few images for the splits, or ``statistics`` that are not 3
            finite means and 3 finite, positive stds.
    """
    if image_size < 1:
        raise ConfigError(f"image_size must be at least 1, but got {image_size=}")
    root = Path(data_dir)
    train, classes = _folder(root, "train", None)
    if statistics is not None:
        mean, std = _checked(statistics)
    else:  # measured on the whole train folder, before any split: the same statistics for every seed
        measured = _statistics(ImageFiles(train, image_size=image_size, mean=[0.0] * 3, std=[1.0] * 3))
        mean, std = tuple(measured[0]), tuple(measured[1])
    if (root / "test").is_dir():
        test, _ = _folder(root, "test", classes)
    else:
        kept, out = seeded_split(len(train), TEST_FRACTION, seed, f"the test split held out of {root / 'train'}")
        train, test = [train[i] for i in kept.tolist()], [train[i] for i in out.tolist()]
    whole = ImageFiles(train, image_size=image_size, mean=mean, std=std)
    kept, val = seeded_split(len(whole), val_fraction, seed, f"val_fraction of dataset 'imagefolder' in {root}")
    return DataBundle(name="imagefolder", train=whole.subset(kept), val=whole.subset(val),
                      test=ImageFiles(test, image_size=image_size, mean=mean, std=std), num_classes=len(classes),
                      input_shape=(3, image_size, image_size), statistics=(mean, std))
