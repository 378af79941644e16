"""Images kept as uint8 and normalised per batch, where the batch is (on the training device).

A float32 copy of an image data set is 4x the size of its uint8 pixels, and CIFAR-10's 50,000
training images are 150 MB as uint8 but 600 MB as float32. :class:`ImageTensors` keeps the pixels
and the per-channel statistics; whoever reads it sees normalised float32 inputs:

* ``dataset[i]`` (and so any :class:`~torch.utils.data.DataLoader`) returns a normalised sample;
* :func:`~wpl_nas.data.iterate_batches`, :func:`~wpl_nas.data.take` and the trainer slice uint8
  batches and call :meth:`ImageTensors.normalise` on them, on the device they live on.

It is deliberately not a :class:`~torch.utils.data.TensorDataset`: code that reads a
TensorDataset's ``.tensors`` would get raw pixels, so such code refuses it instead (a TypeError)
rather than silently training on unnormalised data. The raw pixels are ``.images``, by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageTensors", "normalise_images"]


def normalise_images(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std``, ``(B, C, H, W)`` or ``(C, H, W)``.

    ``mean``/``std`` are float32 ``(C, 1, 1)`` on the images' device. The operations are those
    the data sets used to apply once to the whole split, in the same order, so every value is
    bit-identical to the precomputed normalisation.
    """
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


class ImageTensors(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)`` held in memory (see the module docstring).

    Args:
        images: The pixels, uint8.
        labels: The class of each image.
        mean: Per-channel mean on the [0, 1] pixel scale.
        std: Per-channel standard deviation on the [0, 1] pixel scale.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, mean: Sequence[float] | Tensor,
                 std: Sequence[float] | Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"ImageTensors takes uint8 (N, C, H, W) images and N labels, but got {images.dtype} "
                             f"{tuple(images.shape)} and {len(labels)} labels")
        self.images = images
        self.labels = labels
        channels = images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(channels, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor]:
        return self.normalise(self.images[index]), self.labels[index]

    def normalise(self, images: Tensor) -> Tensor:
        """A batch (or one image) of this data set's uint8 pixels, normalised: float32, same shape."""
        return normalise_images(images, self.mean, self.std)

    def subset(self, index: Tensor | slice) -> ImageTensors:
        """The images at ``index`` (a slice is a copy-free view)."""
        return ImageTensors(self.images[index], self.labels[index], mean=self.mean, std=self.std)

    def to(self, device: torch.device | str) -> ImageTensors:
        """This data set on ``device`` (itself if it is there already)."""
        if self.images.device == torch.device(device):
            return self
        return ImageTensors(self.images.to(device), self.labels.to(device), mean=self.mean.to(device),
                            std=self.std.to(device))
