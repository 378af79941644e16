"""Scoring a candidate on a fixed evaluation set."""

from __future__ import annotations

import torch

from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

__all__ = ["accuracy"]


def accuracy(supernet: Supernet, arch: Architecture, x: torch.Tensor, y: torch.Tensor, *,
             batch_size: int) -> float:
    """Top-1 accuracy of ``arch`` on ``(x, y)``, in fixed order and fixed batches.

    Batch norm uses batch statistics (see :mod:`wpl_nas.ops`), so the batches must be the
    same every time a candidate is re-scored; they are, because ``(x, y)`` is fixed.
    """
    was_training = supernet.training
    supernet.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    with torch.inference_mode(), supernet.use(arch):
        for start in range(0, len(y), batch_size):
            logits = supernet(x[start: start + batch_size])  # (B, classes)
            correct += (logits.argmax(1) == y[start: start + batch_size]).sum()
    supernet.train(was_training)
    return correct.item() / max(len(y), 1)
