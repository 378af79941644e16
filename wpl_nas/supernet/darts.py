"""The supernet of ``darts`` spaces: DARTS's network of normal and reduction cells, every op on every edge.

The skeleton is DARTS's (Liu et al., ICLR 2019; its CIFAR evaluation network without the
auxiliary head): a stem (3x3 conv + BN to ``stem_multiplier * C`` channels), then the cells,
each reading the two previous cells' outputs through a preprocessing step (ReLU-Conv1x1-BN, or
:class:`FactorizedReduce` on ``c_{k-2}`` when ``c_{k-1}`` came from a reduction cell), the
channels doubling at every reduction cell; then global average pooling and a linear head.

Every (edge, op) module lives in a cell's ``edges`` dict as ``edges[<cell>/<src>-><dst>][<op>]``
(``normal/0->2``): one module per edge and op, shared by both slots of a node (DARTS's weight
sharing, one mixed op per edge). When both slots of a node pick the same input *and* the same
op, that module runs once and counts twice. ``none`` builds nothing and is never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from wpl_nas.ops import FactorizedReduce, ReLUConvBN, batch_norm, conv, create_op, global_pool
from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.spaces._darts import CELL_TYPES, DartsSpace
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["DartsCell", "DartsSupernet"]


@dataclass(frozen=True)
class _CellPlan:
    """One cell type of an architecture, ready to run.

    Attributes:
        nodes: Per intermediate node, in order, its terms ``(src, op, times)`` (``none`` left
            out; a term picked by both slots has ``times`` 2). A node with no term is zero.
        slots: Per intermediate node, in order, whether it is part of the output; the others
            fill their place in the output with zeros (``loose_ends``; see :class:`DartsCell`).
    """

    nodes: tuple[tuple[tuple[int, str, int], ...], ...]
    slots: tuple[bool, ...]


class DartsCell(nn.Module):
    """One cell position: its preprocessing, and a module per (edge, op) it may run.

    The output always has one ``channels``-wide slot per intermediate node, so the cells after
    it do not depend on the architecture: with ``output: all`` every slot holds its node (DARTS);
    with ``loose_ends`` the slots of nodes read inside the cell are zero. The next cell's 1x1
    preprocessing conv then applies to the loose ends exactly the weight slices ENAS gathers
    for them (the other slices get zero gradient).

    Args:
        space: The space.
        cell_type: ``normal`` or ``reduce``.
        c_pp: Channels of ``c_{k-2}``.
        c_p: Channels of ``c_{k-1}``.
        channels: Channels of every node of this cell.
        reduction_prev: Whether ``c_{k-1}`` came from a reduction cell (``c_{k-2}`` is then
            twice as large and is halved by a :class:`FactorizedReduce`).
        units: The ``(unit, op)`` pairs to build (a stand-alone network's); None: every one.
    """

    def __init__(self, space: DartsSpace, *, cell_type: str, c_pp: int, c_p: int, channels: int,
                 reduction_prev: bool, units: set[tuple[str, str]] | None) -> None:
        super().__init__()
        dims = cast(int, space.dims)
        self.cell_type = cell_type
        self.reduction = cell_type == "reduce"
        self.channels = channels
        self.preprocess0 = (FactorizedReduce(dims, c_pp, channels) if reduction_prev
                            else ReLUConvBN(dims, c_pp, channels, 1))
        self.preprocess1 = ReLUConvBN(dims, c_p, channels, 1)
        wanted = ([(space.unit(cell_type, i, j), op) for j in space.intermediate for i in range(j)
                   for op in space.ops if op != "none"]
                  if units is None else sorted(units))
        self.edges = nn.ModuleDict()
        for unit, op in wanted:
            cell, _, edge = unit.partition("/")
            if cell != cell_type:
                continue
            src = int(edge.split("->")[0])
            # As in DARTS, a reduction cell halves its inputs on the edges that read them.
            stride = 2 if self.reduction and src < 2 else 1
            if unit not in self.edges:
                self.edges[unit] = nn.ModuleDict()
            cast(nn.ModuleDict, self.edges[unit])[op] = create_op(op, channels=channels, dims=dims, stride=stride)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, plan: _CellPlan) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        ref = states[1]
        if self.reduction:  # the shape of a node: the inputs' halved (rounded up, as strided ops do)
            size = [(n + 1) // 2 for n in ref.shape[2:]]
            zero = ref.new_zeros(ref.shape[0], self.channels, *size)
        else:
            zero = torch.zeros_like(ref)
        for j, terms in enumerate(plan.nodes, start=2):
            node: torch.Tensor | None = None
            for src, op, times in terms:
                ops = cast(nn.ModuleDict, self.edges[f"{self.cell_type}/{src}->{j}"])
                out = ops[op](states[src])
                out = out * times if times > 1 else out
                node = out if node is None else node + out
            states.append(zero if node is None else node)
        return torch.cat([s if keep else zero for s, keep in zip(states[2:], plan.slots, strict=True)], dim=1)


@SUPERNETS.register("darts")
class DartsSupernet(Supernet):
    """The supernet of a ``darts`` space: DARTS's network with every op on every cell edge.

    Build it as ``Supernet(space, ...)``; see :class:`Supernet` for the arguments. Cells are
    grouped into ``stages``, a new stage starting at each reduction cell, so a stage's last cell
    outputs its representation. ``path_units(arch)`` are the ``(edge, op)`` pairs of the
    architecture's non-``none`` picks, in both cell types.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        ds = cast(DartsSpace, space)
        dims = cast(int, ds.dims)
        c_stem = ds.stem_multiplier * ds.channels
        self.stem = nn.Sequential(conv(dims, self.in_channels, c_stem, 3), batch_norm(dims, c_stem))
        units = self.path_units(self.fixed) if self.fixed is not None else None
        stages: list[list[nn.Module]] = [[]]
        c_pp, c_p, c = c_stem, c_stem, ds.channels
        reduction_prev = False
        for i in range(ds.cells):
            reduction = i in ds.reduction_cells
            if reduction:
                c *= 2
                if stages[-1]:
                    stages.append([])
            stages[-1].append(DartsCell(ds, cell_type="reduce" if reduction else "normal", c_pp=c_pp, c_p=c_p,
                                        channels=c, reduction_prev=reduction_prev, units=units))
            c_pp, c_p = c_p, ds.nodes * c
            reduction_prev = reduction
        self.stages = nn.ModuleList(nn.Sequential(*cells) for cells in stages)

        self.make_heads(lambda: nn.Sequential(global_pool(dims), nn.Linear(c_p, self.num_classes)))

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        ds = cast(DartsSpace, self.space)
        return {(ds.unit(cell, s, d), op) for cell in CELL_TYPES for s, d, op in ds.live_picks(arch, cell)}

    def plan(self, arch: Architecture) -> dict[str, _CellPlan]:
        ds = cast(DartsSpace, self.space)
        plans = {}
        for cell in CELL_TYPES:
            nodes = []
            for j in ds.intermediate:
                terms: dict[tuple[int, str], int] = {}
                for s, d, op in ds.live_picks(arch, cell):
                    if d == j:
                        terms[s, op] = terms.get((s, op), 0) + 1
                nodes.append(tuple((s, op, times) for (s, op), times in terms.items()))
            concat = set(ds.concat(arch, cell))
            plans[cell] = _CellPlan(tuple(nodes), tuple(j in concat for j in ds.intermediate))
        return plans

    def forward_path(self, x: torch.Tensor, plan: dict[str, _CellPlan]) -> torch.Tensor:
        s0 = s1 = self.stem(x)  # (B, C, L) or (B, C, H, W)
        for stage in self.stages:
            for cell in cast(nn.Sequential, stage):
                # A cell reads two inputs, so the stage's blocks are run here, not by the Sequential.
                s0, s1 = s1, cell(s0, s1, plan[cast(DartsCell, cell).cell_type])
        assert self._arch is not None
        return cast(torch.Tensor, self.head_of(self._arch)(s1))  # (B, num_classes)
