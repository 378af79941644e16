"""The supernet of ``mlp`` spaces: per layer one weight matrix at the largest width, kept in blocks.

A candidate of widths ``w_1 .. w_N`` runs layer ``l`` on the top-left ``w_l x w_{l-1}`` corner of
that layer's matrix (``w_0`` is the flattened input size) and the head on its first ``w_N``
columns, so narrower candidates train the corner that wider ones also use (slimmable weight
sharing). The matrix is stored as a grid of blocks cut at the layer's width choices: a corner is
a set of whole blocks, so the blocks outside a candidate's corner are parameters it does not
use at all. They get no gradient, and the optimiser leaves them (and their momentum and weight
decay) alone, exactly as it leaves the ops off a cell candidate's path; a single sliced matrix
would instead receive zero gradients outside the corner that momentum and weight decay still
turn into updates of other candidates' weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.spaces._mlp import ACTIVATIONS, LayerPick, MLPSpace
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["BlockLinear", "MLPSupernet"]


def _used(bounds: Sequence[int], width: int) -> int:
    """How many blocks of ``bounds`` (their ends, increasing) a width covers."""
    return bounds.index(width) + 1


def corner(rows: Sequence[int], cols: Sequence[int], out_width: int, in_width: int) -> set[tuple[int, int]]:
    """The ``(row block, column block)`` pairs of the ``out_width x in_width`` corner of a grid."""
    return {(a, b) for a in range(_used(rows, out_width)) for b in range(_used(cols, in_width))}


class _Block(nn.Module):
    """One block of a :class:`BlockLinear`: its weight, and its rows' bias if it is in column block 0."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None


class BlockLinear(nn.Module):
    """A linear map whose weight is a grid of blocks, cut at the output widths ``rows`` and the
    input widths ``cols`` (each a list of block ends, increasing).

    Block ``(a, b)`` is ``edges[unit]["r<a>c<b>"]`` (or ``slices[...]``, per ``container``): rows
    ``rows[a-1]:rows[a]``, columns ``cols[b-1]:cols[b]``; the bias of row block ``a`` sits in its
    block ``c0`` (every width uses the first columns). With ``corner_of`` = ``(out_width,
    in_width)``, only that corner's blocks exist (a stand-alone network), initialised as an
    ``nn.Linear`` of that size would be.
    """

    def __init__(self, unit: str, rows: Sequence[int], cols: Sequence[int], *,
                 corner_of: tuple[int, int] | None = None, container: str = "edges") -> None:
        super().__init__()
        self.unit, self.rows, self.cols, self.container = unit, list(rows), list(cols), container
        out_width, in_width = corner_of if corner_of is not None else (self.rows[-1], self.cols[-1])
        full = nn.Linear(in_width, out_width)  # PyTorch's initialisation for this size, then cut in blocks
        grid = nn.ModuleDict()
        for a, b in sorted(corner(self.rows, self.cols, out_width, in_width)):
            r0, r1 = ([0, *self.rows])[a], self.rows[a]
            c0, c1 = ([0, *self.cols])[b], self.cols[b]
            grid[f"r{a}c{b}"] = _Block(full.weight.detach()[r0:r1, c0:c1].clone(),
                                       full.bias.detach()[r0:r1].clone() if b == 0 else None)
        # `edges`: searchable weights; `slices`: skeleton used in part (see Supernet).
        setattr(self, container, nn.ModuleDict({unit: grid}))

    def units(self, out_width: int, in_width: int) -> set[tuple[str, str]]:
        """The ``(unit, block)`` keys of the ``out_width x in_width`` corner (:meth:`Supernet.path_units`)."""
        return {(self.unit, f"r{a}c{b}") for a, b in corner(self.rows, self.cols, out_width, in_width)}

    def forward(self, x: torch.Tensor, out_width: int) -> torch.Tensor:
        grid = cast(dict[str, _Block], getattr(self, self.container)[self.unit])
        n_rows, n_cols = _used(self.rows, out_width), _used(self.cols, x.shape[-1])
        weight = torch.cat([torch.cat([grid[f"r{a}c{b}"].weight for b in range(n_cols)], dim=1)
                            for a in range(n_rows)])
        bias = torch.cat([cast(torch.Tensor, grid[f"r{a}c0"].bias) for a in range(n_rows)])
        return F.linear(x, weight, bias)


class MLPLayer(nn.Module):
    """One hidden layer: a :class:`BlockLinear` to the candidate's width, then its activation."""

    def __init__(self, linear: BlockLinear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor, pick: LayerPick) -> torch.Tensor:
        return ACTIVATIONS.get(pick.activation)(self.linear(x, pick.width))


class _Head(BlockLinear):
    """The head: all the classes, from as many columns as the last hidden layer is wide. It is
    skeleton, as every kind's head is (``slices``: not protected by default)."""

    def __init__(self, cols: Sequence[int], classes: int, *, corner_of: tuple[int, int] | None) -> None:
        super().__init__("head", [classes], cols, corner_of=corner_of, container="slices")

    def forward(self, x: torch.Tensor, out_width: int | None = None) -> torch.Tensor:
        return super().forward(x, self.rows[-1])


@SUPERNETS.register("mlp")
class MLPSupernet(Supernet):
    """Flatten (``stem``) -> one stage per hidden layer (an :class:`MLPLayer`) -> linear head.

    The input size is ``prod(input_shape)``. Every weight is a block of a layer's matrix:
    ``stages.<i>.0.linear.edges.l<i+1>.r<a>c<b>.weight``, searchable (strategies protect them),
    and the head's ``head.slices.head.r0c<b>``, skeleton like every kind's head (protected only
    with ``include_global``). A stand-alone network (``fixed=arch``) holds just its corner's blocks, under
    the same names. Build it as ``Supernet(space, ...)``; see :class:`Supernet`.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        mlp = cast(MLPSpace, space)
        self.stem = nn.Flatten()
        inputs = math.prod(self.input_shape)
        bounds = [[inputs], *(sorted(layer.widths) for layer in mlp.layers)]
        # A stand-alone network holds only its corner of each matrix (the same names).
        widths = self._widths(self.fixed) if self.fixed is not None else None
        self.stages = nn.ModuleList(
            nn.Sequential(MLPLayer(BlockLinear(mlp.layer_label(i), bounds[i + 1], bounds[i], corner_of=(
                None if widths is None else (widths[i + 1], widths[i])))))
            for i in range(len(mlp.layers)))
        self.make_heads(lambda: _Head(bounds[-1], self.num_classes, corner_of=(
            None if widths is None else (self.num_classes, widths[-1]))))

    def _widths(self, arch: Architecture) -> list[int]:
        """The input size, then ``arch``'s width of each hidden layer."""
        return [math.prod(self.input_shape), *(p.width for p in cast(MLPSpace, self.space).picks(arch))]

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        widths = self._widths(arch)
        units: set[tuple[str, str]] = set()
        for i, stage in enumerate(self.stages):
            units |= cast(MLPLayer, cast(nn.Sequential, stage)[0]).linear.units(widths[i + 1], widths[i])
        head = cast(_Head, self.head_of(arch))
        return units | head.units(self.num_classes, widths[-1])

    def plan(self, arch: Architecture) -> list[LayerPick]:
        return cast(MLPSpace, self.space).picks(arch)

    def forward_path(self, x: torch.Tensor, plan: list[LayerPick]) -> torch.Tensor:
        x = self.stem(x)  # (B, prod(input_shape))
        for stage, pick in zip(self.stages, plan, strict=True):
            x = cast(nn.Sequential, stage)[0](x, pick)
        assert self._arch is not None
        return cast(torch.Tensor, self.head_of(self._arch)(x))  # (B, num_classes)
