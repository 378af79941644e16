"""Scoring a candidate on a fixed evaluation set: accuracy, or perplexity for language data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wpl_nas.distributed import World
from wpl_nas.registry import Registry
from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

__all__ = ["METRICS", "Metric", "accuracy", "perplexity"]


def accuracy(supernet: Supernet, arch: Architecture, x: torch.Tensor, y: torch.Tensor, *,
             batch_size: int, world: World | None = None) -> float:
    """Top-1 accuracy of ``arch`` on ``(x, y)``, in fixed order and fixed batches.

    Batch norm uses batch statistics (see :mod:`wpl_nas.ops`), so the batches must be the
    same every time a candidate is re-scored; they are, because ``(x, y)`` is fixed.

    Args:
        world: The processes that score ``arch`` together (:mod:`wpl_nas.distributed`), every one of
            them at this point with the same ``arch``, weights and ``(x, y)``: each counts the correct
            predictions of its contiguous share of the batches (:meth:`World.batch_starts`, the same
            batches as one process), and the counts are summed over them, so every process holds
            exactly one process's accuracy [default: this process scores every batch].
    """
    world = world or World()
    was_training = supernet.training
    supernet.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    with torch.inference_mode(), supernet.use(arch):
        for start in world.batch_starts(len(y), batch_size=batch_size):
            logits = supernet(x[start: start + batch_size])  # (B, classes)
            correct += (logits.argmax(1) == y[start: start + batch_size]).sum()
    supernet.train(was_training)
    world.all_reduce_(correct)  # an integer count: the sum is exact in any order
    return correct.item() / max(len(y), 1)


def perplexity(supernet: Supernet, arch: Architecture, x: torch.Tensor, y: torch.Tensor, *,
               batch_size: int, world: World | None = None) -> float:
    """Per-token perplexity of ``arch`` on token windows ``(x, y)``: exp of the mean cross-entropy
    over every target token (logits ``(B, V, T)``, targets ``(B, T)``), in fixed batches.

    Args:
        world: The processes that score ``arch`` together, as in :func:`accuracy`: each sums the
            token losses of its share of the batches in float64, and the sums are summed over them
            (every process holds the whole ``y``, so the token count is known to each). Equal to one
            process's perplexity up to the order in which the float64 sums are added, not bit for
            bit [default: this process scores every batch].
    """
    world = world or World()
    was_training = supernet.training
    supernet.eval()
    total = torch.zeros((), dtype=torch.float64, device=y.device)
    with torch.inference_mode(), supernet.use(arch):
        for start in world.batch_starts(len(y), batch_size=batch_size):
            logits = supernet(x[start: start + batch_size])
            total += F.cross_entropy(logits, y[start: start + batch_size], reduction="sum").double()
    supernet.train(was_training)
    world.all_reduce_(total)
    mean = total.item() / max(y.numel(), 1)
    return math.exp(mean) if mean < 709.0 else math.inf  # exp overflows a float past ~709.78


@dataclass(frozen=True)
class Metric:
    """A way to score candidates, and which way is better.

    Everything that ranks candidates or measures forgetting (the retained pool, bounded
    strategies, rank fidelity) works on :meth:`quality`, which is higher for better scores.

    ``compute(supernet, arch, x, y, *, batch_size)`` takes the score; a data-parallel search also
    passes ``world=`` (the processes that take the candidate's score together, as :func:`accuracy`
    does) when it scores the candidate in training.
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
