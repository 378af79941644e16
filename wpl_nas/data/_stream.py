"""Batches of a data set too large for memory, decoded by worker processes, in an order the caller draws.

The trainer draws each epoch's permutation from its seeded per-candidate generator, exactly as for
in-memory data (:func:`~wpl_nas.data.iterate_batches`), and hands it to :class:`StreamedBatches`,
which asks its :class:`~torch.utils.data.DataLoader` for those batches in that order. The batch
order is therefore a function of ``(seed, candidate position)`` whatever the number of workers, and
a resumed search sees the batches an uninterrupted one would. Workers only decode (deterministic:
resize, crop), so they hold no randomness of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from wpl_nas.data._images import normalise_images

__all__ = ["StreamedBatches"]


class _Plan(Sampler[list[int]]):
    """A batch sampler that yields the batches it was last given: the loader's iterator reads it anew each
    epoch (in the main process), so persistent workers follow every new order."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamedBatches:
    """One :class:`DataLoader` over ``dataset`` for a whole search: ``workers`` processes (kept alive
    between epochs and candidates when there are any), pinned memory on CUDA, non-blocking copies.

    A data set of image files (:class:`~wpl_nas.data._imagefolder.ImageFiles`) is read as uint8
    pixels, a quarter of float32's bytes through the workers' queues, the pinned buffers and the bus,
    and normalised on ``device``; any other data set as its samples come.

    Args:
        dataset: The split to read.
        workers: Decoding processes (0: in the main process).
        device: Where the batches go.
    """

    def __init__(self, dataset: Dataset[Any], *, workers: int, device: torch.device) -> None:
        from wpl_nas.data._imagefolder import ImageFiles  # which imports the registry, which imports this

        self.device = device
        self._plan = _Plan()
        self._stats: tuple[Tensor, Tensor] | None = None
        source: Dataset[Any] = dataset
        if isinstance(dataset, ImageFiles):
            source = dataset.pixels()
            self._stats = dataset.mean.to(device), dataset.std.to(device)
        self.loader = DataLoader(source, batch_sampler=self._plan, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self._length = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._length

    def batches(self, order: Tensor, *, batch_size: int, limit: int | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """``(inputs, labels)`` on the device, batch after batch of ``order`` (a permutation of the
        samples' indices); at most ``limit`` batches (only those are decoded).

        One pass at a time: the loader (and its persistent workers) is shared, so starting to read
        another pass ends the one before (the trainer reads its passes one after another).
        """
        n = len(order)
        stop = n - n % batch_size if drop_last else n
        plan = [order[start:start + batch_size].tolist() for start in range(0, stop, batch_size)][:limit]
        return self._copied(plan)

    def _copied(self, plan: list[list[int]]) -> Iterator[tuple[Tensor, Tensor]]:
        self._plan.batches = plan  # set when reading starts: the loader's iterator reads it now
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (x if self._stats is None else normalise_images(x, *self._stats)), y
