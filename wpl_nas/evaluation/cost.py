"""What a candidate costs: floating-point operations and latency, for multi-objective search."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

__all__ = ["count_flops", "measure_latency"]


def _batch(supernet: Supernet, shape: Sequence[int], size: int) -> torch.Tensor:
    device = next(supernet.parameters()).device
    return torch.zeros(size, *shape, device=device)


def count_flops(supernet: Supernet, arch: Architecture, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``arch`` on one sample of ``input_shape`` (PyTorch's FLOP counter:
    convolutions and matrix products, a multiply-add counted as 2; measured on a batch of 2, halved,
    since batch norm needs two samples)."""
    was_training = supernet.training
    supernet.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), supernet.use(arch), counter:
        supernet(_batch(supernet, input_shape, 2))
    supernet.train(was_training)
    return counter.get_total_flops() // 2


def measure_latency(supernet: Supernet, arch: Architecture, input_shape: Sequence[int], *,
                    device: torch.device, batch_size: int = 2, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in milliseconds of a forward pass of ``arch`` on ``batch_size`` samples on
    ``device`` (synchronised on CUDA). A noisy measure on a shared machine: it orders candidates of
    clearly different size, not ones within a few percent of each other."""
    x = _batch(supernet, input_shape, batch_size)
    was_training = supernet.training
    supernet.eval()
    times = []
    with torch.inference_mode(), supernet.use(arch):
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            supernet(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    supernet.train(was_training)
    return 1000.0 * statistics.median(times)
