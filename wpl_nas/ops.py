"""Candidate operations on a cell edge, registered by name.

Every operation maps ``channels -> channels`` at stride 1 and works in 1-D or 2-D (``dims``).
Names follow NAS-Bench-201 (``nor_conv_3x3`` = ReLU -> Conv -> BatchNorm); the ``conv_K`` /
``avg_pool_K`` names are the same operations spelled for 1-D spaces.

Batch norm uses batch statistics in training *and* evaluation (``track_running_stats=False``),
the NAS-Bench-201 supernet convention: running statistics would be overwritten by every later
candidate, which is itself a form of forgetting that no weight consolidation can undo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from wpl_nas.registry import Registry

__all__ = ["OPS", "batch_norm", "conv", "create_op"]

OpBuilder = Callable[[int, int], nn.Module]
OPS: Registry[OpBuilder] = Registry("operation")


def conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    """A bias-free 'same'-padded convolution in ``dims`` dimensions."""
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


def batch_norm(dims: int, channels: int) -> nn.Module:
    """Affine batch norm on batch statistics (see the module docstring for why)."""
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(channels, affine=True, track_running_stats=False)


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BatchNorm, NAS-Bench-201's ``nor_conv``."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            conv(dims, c_in, c_out, kernel, stride),
            batch_norm(dims, c_out),
        )


class Zero(nn.Module):
    """The ``none`` operation. The supernet skips ``none`` edges instead of running this;
    it exists so that an op can be built for every name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _pool(dims: int, kernel: int) -> nn.Module:
    if dims == 1:
        return nn.AvgPool1d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)


OPS.add("none", lambda channels, dims: Zero())
OPS.add("skip_connect", lambda channels, dims: nn.Identity())
for _k in (1, 3, 5, 7):
    def _conv_builder(channels: int, dims: int, k: int = _k) -> nn.Module:
        return ReLUConvBN(dims, channels, channels, k)

    def _pool_builder(channels: int, dims: int, k: int = _k) -> nn.Module:
        return _pool(dims, k)

    OPS.add(f"nor_conv_{_k}x{_k}", _conv_builder)
    OPS.add(f"conv_{_k}", _conv_builder)
    if _k > 1:
        OPS.add(f"avg_pool_{_k}x{_k}", _pool_builder)
        OPS.add(f"avg_pool_{_k}", _pool_builder)


def create_op(name: str, *, channels: int, dims: int) -> nn.Module:
    """Build operation ``name`` for ``channels`` channels in ``dims`` (1 or 2) dimensions.

    Raises:
        ConfigError: unknown operation name (the message lists the valid ones).
    """
    return OPS.get(name)(channels, dims)
