"""Scoring a candidate on a fixed evaluation set: accuracy, or perplexity for language data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wpl_nas.registry import Registry
from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

__all__ = ["METRICS", "Metric", "accuracy", "perplexity"]


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


def perplexity(supernet: Supernet, arch: Architecture, x: torch.Tensor, y: torch.Tensor, *,
               batch_size: int) -> float:
    """Per-token perplexity of ``arch`` on token windows ``(x, y)``: exp of the mean cross-entropy
    over every target token (logits ``(B, V, T)``, targets ``(B, T)``), in fixed batches."""
    was_training = supernet.training
    supernet.eval()
    total = torch.zeros((), dtype=torch.float64, device=y.device)
    with torch.inference_mode(), supernet.use(arch):
        for start in range(0, len(y), batch_size):
            logits = supernet(x[start: start + batch_size])
            total += F.cross_entropy(logits, y[start: start + batch_size], reduction="sum").double()
    supernet.train(was_training)
    mean = total.item() / max(y.numel(), 1)
    return math.exp(mean) if mean < 709.0 else math.inf  # exp overflows a float past ~709.78


@dataclass(frozen=True)
class Metric:
    """A way to score candidates, and which way is better.

    Everything that ranks candidates or measures forgetting (the retained pool, bounded
    strategies, rank fidelity) works on :meth:`quality`, which is higher for better scores.
    """

    name: str
    short: str  # in TensorBoard tags: val/acc, val/ppl
    higher_is_better: bool
    compute: Callable[..., float]

    @property
    def direction(self) -> str:
        """Optuna's direction for this score: ``maximize`` or ``minimize``."""
        return "maximize" if self.higher_is_better else "minimize"

    def quality(self, score: float) -> float:
        """``score`` signed so that higher is better."""
        return score if self.higher_is_better else -score


#: The scores a :class:`~wpl_nas.data.DataBundle` can name as its ``metric``.
METRICS: Registry[Metric] = Registry("metric")
METRICS.add("accuracy", Metric("accuracy", "acc", True, accuracy))
METRICS.add("perplexity", Metric("perplexity", "ppl", False, perplexity))
