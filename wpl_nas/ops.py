"""Candidate operations on a cell edge, registered by name.

Every operation maps ``channels -> channels`` at stride 1 and works in 1-D or 2-D (``dims``).
Names follow NAS-Bench-201 (``nor_conv_3x3`` = ReLU -> Conv -> BatchNorm) and DARTS
(``sep_conv_3x3``, ``dil_conv_3x3``, ``max_pool_3x3``); the ``conv_K`` / ``avg_pool_K`` /
``sep_conv_K`` ... names are the same operations spelled for 1-D spaces.

Reduction cells of DARTS-style spaces also need the operations at stride 2: every builder takes
a stride (``create_op(name, channels=..., dims=..., stride=2)``; ``skip_connect`` at stride 2 is
DARTS's :class:`FactorizedReduce`).

Batch norm uses batch statistics in training *and* evaluation (``track_running_stats=False``),
the NAS-Bench-201 supernet convention: running statistics would be overwritten by every later
candidate, which is itself a form of forgetting that no weight consolidation can undo.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.distributed import BatchNorm1d, BatchNorm2d
from wpl_nas.registry import Registry

__all__ = ["OPS", "DilConv", "FactorizedReduce", "SepConv", "batch_norm", "conv", "create_op", "global_pool"]

#: Builds an operation as ``builder(channels, dims, stride)``.
OpBuilder = Callable[[int, int, int], nn.Module]
#: Operations by name; every one also builds at stride 2 (for reduction cells).
OPS: Registry[OpBuilder] = Registry("operation")


def conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1, *,
         groups: int = 1, dilation: int = 1) -> nn.Module:
    """A bias-free 'same'-padded convolution in ``dims`` dimensions (at stride 2: half size, rounded up)."""
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
               groups=groups, bias=False)


def global_pool(dims: int) -> nn.Module:
    """Average over every position: ``(B, C, *spatial)`` -> ``(B, C)``."""
    return nn.Sequential(nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1), nn.Flatten())


def batch_norm(dims: int, channels: int) -> nn.Module:
    """Affine batch norm on batch statistics (see the module docstring for why); in a data-parallel
    training step, on the global batch's (:mod:`wpl_nas.distributed`), else ``nn.BatchNorm1d/2d``'s own."""
    cls = BatchNorm1d if dims == 1 else BatchNorm2d
    return cls(channels, affine=True, track_running_stats=False)


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BatchNorm, NAS-Bench-201's ``nor_conv``."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            conv(dims, c_in, c_out, kernel, stride),
            batch_norm(dims, c_out),
        )


class SepConv(nn.Sequential):
    """DARTS's separable convolution: (ReLU -> depthwise conv -> pointwise conv -> BN) twice;
    only the first depthwise conv has the stride."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            conv(dims, c_in, c_in, kernel, stride, groups=c_in),
            conv(dims, c_in, c_in, 1),
            batch_norm(dims, c_in),
            nn.ReLU(inplace=False),
            conv(dims, c_in, c_in, kernel, groups=c_in),
            conv(dims, c_in, c_out, 1),
            batch_norm(dims, c_out),
        )


class DilConv(nn.Sequential):
    """DARTS's dilated separable convolution: ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1, *, dilation: int = 2) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            conv(dims, c_in, c_in, kernel, stride, groups=c_in, dilation=dilation),
            conv(dims, c_in, c_out, 1),
            batch_norm(dims, c_out),
        )


class FactorizedReduce(nn.Module):
    """DARTS's stride-2 reduction: ReLU, then two stride-2 1x1 convolutions, the second on the
    input shifted by one position along every spatial axis, concatenated, then BN.

    The two convolutions together see every input position that a plain stride-2 1x1
    convolution would skip. The shifted input is zero-padded back to the input's size, so
    odd sizes also give ``ceil(size / 2)`` outputs (on even sizes the result is DARTS's).
    """

    def __init__(self, dims: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.dims = dims
        self.relu = nn.ReLU(inplace=False)
        # An odd c_out gets the extra channel from the second convolution.
        self.conv_a = conv(dims, c_in, c_out // 2, 1, 2)
        self.conv_b = conv(dims, c_in, c_out - c_out // 2, 1, 2)
        self.bn = batch_norm(dims, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:], (0, 1)) if self.dims == 1 else F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class Zero(nn.Module):
    """The ``none`` operation. The supernet skips ``none`` edges instead of running this;
    it exists so that an op can be built for every name."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:  # the shape a stride-`stride` 'same' op gives
            x = x[:, :, :: self.stride] if x.dim() == 3 else x[:, :, :: self.stride, :: self.stride]
        return x.mul(0.0)


def _pool(dims: int, kernel: int, stride: int = 1) -> nn.Module:
    if dims == 1:
        return nn.AvgPool1d(kernel, stride=stride, padding=kernel // 2, count_include_pad=False)
    return nn.AvgPool2d(kernel, stride=stride, padding=kernel // 2, count_include_pad=False)


def _max_pool(dims: int, kernel: int, stride: int = 1) -> nn.Module:
    cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    return cls(kernel, stride=stride, padding=kernel // 2)


def _skip(channels: int, dims: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(dims, channels, channels)


OPS.add("none", lambda channels, dims, stride: Zero(stride))
OPS.add("skip_connect", _skip)
for _k in (1, 3, 5, 7):
    def _conv_builder(channels: int, dims: int, stride: int, k: int = _k) -> nn.Module:
        return ReLUConvBN(dims, channels, channels, k, stride)

    def _pool_builder(channels: int, dims: int, stride: int, k: int = _k) -> nn.Module:
        return _pool(dims, k, stride)

    OPS.add(f"nor_conv_{_k}x{_k}", _conv_builder)
    OPS.add(f"conv_{_k}", _conv_builder)
    if _k > 1:
        OPS.add(f"avg_pool_{_k}x{_k}", _pool_builder)
        OPS.add(f"avg_pool_{_k}", _pool_builder)

# DARTS's operations (Liu et al., ICLR 2019).
for _k in (3, 5):
    def _sep_conv(channels: int, dims: int, stride: int, k: int = _k) -> nn.Module:
        return SepConv(dims, channels, channels, k, stride)

    def _dil_conv(channels: int, dims: int, stride: int, k: int = _k) -> nn.Module:
        return DilConv(dims, channels, channels, k, stride, dilation=2)

    for _suffix in (f"{_k}x{_k}", f"{_k}"):
        OPS.add(f"sep_conv_{_suffix}", _sep_conv)
        OPS.add(f"dil_conv_{_suffix}", _dil_conv)


def _max_pool_3(channels: int, dims: int, stride: int) -> nn.Module:
    return _max_pool(dims, 3, stride)


OPS.add("max_pool_3x3", _max_pool_3)
OPS.add("max_pool_3", _max_pool_3)


def create_op(name: str, *, channels: int, dims: int, stride: int = 1) -> nn.Module:
    """Build operation ``name`` for ``channels`` channels in ``dims`` (1 or 2) dimensions.

    Args:
        name: The operation (a name in :data:`OPS`).
        channels: Input and output channels.
        dims: 1 for sequences ``(B, C, L)``, 2 for images ``(B, C, H, W)``.
        stride: 1, or 2 to halve every spatial size (rounded up), as on the edges that read a
            reduction cell's inputs.

    Raises:
        ConfigError: unknown operation name (the message lists the valid ones).
    """
    return OPS.get(name)(channels, dims, stride)
