"""One flat vector over all supernet parameters, viewed tensor by tensor."""

from __future__ import annotations

import torch

from wpl_nas.supernet import Supernet

__all__ = ["FlatLayout"]


class FlatLayout:
    """Where each supernet parameter lives in a flat buffer of ``numel`` elements.

    Strategies keep per-weight state (importances, anchors, teacher weights) in one
    preallocated buffer each, registered with the strategy so it is saved and moved with it;
    this gives the per-tensor views into such a buffer.
    """

    def __init__(self, supernet: Supernet) -> None:
        self._slices: dict[str, tuple[int, torch.Size]] = {}
        offset = 0
        for name, p in supernet.named_parameters():
            self._slices[name] = (offset, p.shape)
            offset += p.numel()
        self.numel = offset
        first = next(supernet.parameters())
        self.device, self.dtype = first.device, first.dtype

    def zeros(self) -> torch.Tensor:
        """A new zero buffer on the supernet's device and dtype."""
        return torch.zeros(self.numel, device=self.device, dtype=self.dtype)

    def view(self, buffer: torch.Tensor, name: str) -> torch.Tensor:
        """Parameter ``name``'s part of ``buffer``, shaped like the parameter."""
        offset, shape = self._slices[name]
        return buffer[offset: offset + shape.numel()].view(shape)
