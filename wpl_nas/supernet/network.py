"""The supernet of ``cell`` spaces: every candidate operation on every edge of every cell."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from wpl_nas.ops import ReLUConvBN, batch_norm, conv, create_op
from wpl_nas.spaces import Architecture, CellSpace, SearchSpace, edge_label
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["Cell", "CellSupernet", "ResidualReduction"]


class ResidualReduction(nn.Module):
    """NAS-Bench-201's residual block between stages: two ReLU-Conv-BN plus a shortcut."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(dims, c_in, c_out, 3, stride)
        self.conv_b = ReLUConvBN(dims, c_out, c_out, 3)
        self.shortcut: nn.Module
        if stride == 2:
            pool = nn.AvgPool1d(2, 2) if dims == 1 else nn.AvgPool2d(2, 2)
            self.shortcut = nn.Sequential(pool, conv(dims, c_in, c_out, 1))
        elif c_in != c_out:
            self.shortcut = ReLUConvBN(dims, c_in, c_out, 1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class Cell(nn.Module):
    """One cell position: a module per (edge, candidate op); runs the edges it is given."""

    def __init__(self, space: CellSpace, channels: int, fixed: Architecture | None) -> None:
        super().__init__()
        self.output_node = space.output_node
        # In a fixed (stand-alone) network only the architecture's live ops exist.
        wanted = (
            {(s, d): {op} for s, d, op in space.active_edges(fixed)}
            if fixed is not None
            else {(s, d): set(ops) for (s, d), ops in zip(space.edges, space.choices.values(), strict=True)}
        )
        self.edges = nn.ModuleDict()
        for (s, d), ops in wanted.items():
            self.edges[edge_label(s, d)] = nn.ModuleDict(
                {op: create_op(op, channels=channels, dims=cast(int, space.dims)) for op in sorted(ops) if op != "none"}
            )

    def forward(self, x: torch.Tensor, active: list[tuple[int, int, str]]) -> torch.Tensor:
        # `active` is in canonical (target-node) order, so every source is final when used.
        nodes: dict[int, torch.Tensor] = {0: x}
        for s, d, op in active:
            src = nodes[s] if s in nodes else torch.zeros_like(x)  # a node with no live input is 0
            ops = cast(nn.ModuleDict, self.edges[edge_label(s, d)])
            out = ops[op](src)
            nodes[d] = nodes[d] + out if d in nodes else out
        return nodes.get(self.output_node, torch.zeros_like(x))


@SUPERNETS.register("cell")
class CellSupernet(Supernet):
    """The supernet of a ``cell`` space: a stem, stages of cells with residual reductions
    between them, and a head; every cell position holds a module per (edge, candidate op).

    Build it as ``Supernet(space, ...)``; see :class:`Supernet` for the arguments.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        cell_space = cast(CellSpace, space)
        dims = cast(int, cell_space.dims)
        self.stem = nn.Sequential(conv(dims, self.in_channels, cell_space.stem_channels, 3),
                                  batch_norm(dims, cell_space.stem_channels))
        self.stages = nn.ModuleList()
        c_prev = cell_space.stem_channels
        for i, stage in enumerate(cell_space.stages):
            blocks: list[nn.Module] = []
            if i > 0 or c_prev != stage.channels:
                blocks.append(ResidualReduction(dims, c_prev, stage.channels, stride=2 if i > 0 else 1))
            blocks += [Cell(cell_space, stage.channels, self.fixed) for _ in range(stage.cells)]
            self.stages.append(nn.Sequential(*blocks))
            c_prev = stage.channels

        def make_head() -> nn.Module:
            pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
            return nn.Sequential(batch_norm(dims, c_prev), nn.ReLU(), pool, nn.Flatten(),
                                 nn.Linear(c_prev, self.num_classes))

        self.make_heads(make_head)

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        return {(edge_label(s, d), op) for s, d, op in cast(CellSpace, self.space).active_edges(arch)}

    def plan(self, arch: Architecture) -> list[tuple[int, int, str]]:
        return cast(CellSpace, self.space).active_edges(arch)

    def forward_path(self, x: torch.Tensor, plan: list[tuple[int, int, str]]) -> torch.Tensor:
        x = self.stem(x)  # (B, C, L) or (B, C, H, W)
        for stage in self.stages:
            for block in cast(nn.Sequential, stage):
                x = block(x, plan) if isinstance(block, Cell) else block(x)
        assert self._arch is not None
        return cast(torch.Tensor, self.head_of(self._arch)(x))  # (B, num_classes)
