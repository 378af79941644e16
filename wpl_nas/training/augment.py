"""Random crops and horizontal flips of image batches, on the device: the usual augmentation of
CIFAR-style training, used by retraining's recipes and, as an option (``--augment``), during search."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment_crop_flip"]


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4) -> torch.Tensor:
    """Random crops of the zero-padded images and random horizontal flips: ``(B, C, H, W)`` in and out.

    The randomness is drawn from ``generator`` (a CPU generator: the trainer's seeded per-candidate
    one, so a resumed run draws the same crops), in one order (row offsets, column offsets, flips),
    then sent to ``x``'s device in one non-blocking copy; the crops are one gather on the device.
    """
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    drawn = torch.stack([dy, dx, flip.long()])  # (3, B): one copy instead of three
    if x.is_cuda:
        drawn = drawn.pin_memory()
    dy, dx, flips = drawn.to(x.device, non_blocking=True)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    crops = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
    crops = crops.permute(0, 3, 1, 2)
    return torch.where(flips.bool()[:, None, None, None], crops.flip(-1), crops)
