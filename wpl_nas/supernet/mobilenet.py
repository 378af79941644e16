"""The supernet of ``mobilenet`` spaces: stages of MBConv block positions, one module per variant.

Every block position holds one inverted-residual block per (kernel size, expansion ratio)
pair of its stage, each with its own weights (as in ProxylessNAS and single-path one-shot
training); a candidate runs, in each stage, the first ``depth`` positions with its variant.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

import torch
from torch import nn

from wpl_nas.ops import batch_norm, conv, global_pool
from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.spaces._mobilenet import MobileNetSpace, StagePick
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["BlockSlot", "MBConv", "MobileNetSupernet"]


def _conv_bn_relu6(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv -> BN -> ReLU6, the unit MobileNetV2 builds everything but its projections from."""
    return nn.Sequential(conv(dims, c_in, c_out, kernel, stride, groups=groups), batch_norm(dims, c_out), nn.ReLU6())


class MBConv(nn.Module):
    """MobileNetV2's inverted residual block.

    ``expand`` (1x1 conv to ``c_in * ratio`` channels, BN, ReLU6; an identity at ratio 1, as in
    MobileNetV2's first block) -> ``depthwise`` (``kernel`` conv per channel with the stride, BN,
    ReLU6) -> ``project`` (1x1 conv to ``c_out``, BN, no activation: the linear bottleneck), plus
    the input when stride 1 keeps the shape.
    """

    def __init__(self, dims: int, c_in: int, c_out: int, *, kernel: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand: nn.Module = _conv_bn_relu6(dims, c_in, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn_relu6(dims, hidden, hidden, kernel, stride, groups=hidden)
        self.project = nn.Sequential(conv(dims, hidden, c_out, 1), batch_norm(dims, c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class BlockSlot(nn.Module):
    """One block position of a stage: ``edges[unit][variant]`` holds an :class:`MBConv` per variant."""

    def __init__(self, unit: str, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.unit = unit
        self.edges = nn.ModuleDict({unit: nn.ModuleDict(blocks)})

    def forward(self, x: torch.Tensor, variant: str) -> torch.Tensor:
        return cast(torch.Tensor, cast(nn.ModuleDict, self.edges[self.unit])[variant](x))


class StageOutput(nn.Identity):
    """Marks the end of a stage: whatever depth a candidate runs, the stage's output passes here,
    so the anatomy's hook on the stage's last module sees it."""


@SUPERNETS.register("mobilenet")
class MobileNetSupernet(Supernet):
    """Stem (3x3 conv, BN, ReLU6) -> stages of :class:`BlockSlot` positions (plus, after the last
    stage's blocks, the optional ``last`` 1x1 conv) -> global average pool and linear head.

    Each stage is an ``nn.Sequential`` with children ``0`` .. ``max(depth) - 1`` (the block
    positions), ``last`` in the last stage if the space has ``last_channels``, and ``out`` (a
    :class:`StageOutput`). Parameter names are ``stages.<i>.<j>.edges.s<i+1>b<j>.k<K>e<E>.*``.
    A stand-alone network (``fixed=arch``) keeps only the positions and variants ``arch``
    runs, under the same names. Build it as ``Supernet(space, ...)``; see :class:`Supernet`.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        mb = cast(MobileNetSpace, space)
        dims = cast(int, mb.dims)
        fixed = mb.picks(self.fixed) if self.fixed is not None else None
        self.stem = _conv_bn_relu6(dims, self.in_channels, mb.stem_channels, 3, mb.stem_stride)
        self.stages = nn.ModuleList()
        c_prev = mb.stem_channels
        for i, st in enumerate(mb.stages):
            if fixed is None:
                variants = [StagePick(k, e, st.max_depth) for k in st.kernel for e in st.expand]
            else:
                variants = [fixed[i]]
            children: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(max(v.depth for v in variants)):
                c_in, stride = (c_prev, st.stride) if j == 0 else (st.channels, 1)
                children[str(j)] = BlockSlot(mb.unit(i, j), {
                    v.variant: MBConv(dims, c_in, st.channels, kernel=v.kernel, expand=v.expand, stride=stride)
                    for v in variants})
            c_prev = st.channels
            if i == len(mb.stages) - 1 and mb.last_channels:
                children["last"] = _conv_bn_relu6(dims, c_prev, mb.last_channels, 1)
                c_prev = mb.last_channels
            children["out"] = StageOutput()
            self.stages.append(nn.Sequential(children))

        self.make_heads(lambda: nn.Sequential(global_pool(dims), nn.Linear(c_prev, self.num_classes)))

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        mb = cast(MobileNetSpace, self.space)
        return {(mb.unit(i, j), pick.variant) for i, pick in enumerate(mb.picks(arch)) for j in range(pick.depth)}

    def plan(self, arch: Architecture) -> list[StagePick]:
        return cast(MobileNetSpace, self.space).picks(arch)

    def forward_path(self, x: torch.Tensor, plan: list[StagePick]) -> torch.Tensor:
        x = self.stem(x)  # (B, C, L) or (B, C, H, W)
        for stage, pick in zip(self.stages, plan, strict=True):
            for name, module in cast(nn.Sequential, stage).named_children():
                if isinstance(module, BlockSlot):
                    if int(name) < pick.depth:  # later positions are skipped: the depth choice
                        x = module(x, pick.variant)
                else:
                    x = module(x)
        assert self._arch is not None
        return cast(torch.Tensor, self.head_of(self._arch)(x))  # (B, num_classes)
