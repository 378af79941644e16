"""The supernet of ``mlp`` spaces: one weight matrix per hidden layer at its largest width, sliced.

A candidate of widths ``w_1 .. w_N`` runs layer ``l`` on rows ``[:w_l]`` and columns
``[:w_{l-1}]`` of that layer's matrix (``w_0`` is the flattened input size) and the head on
columns ``[:w_N]``, so narrower candidates train the top-left corner that wider ones also use.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.spaces._mlp import ACTIVATIONS, LayerPick, MLPSpace
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["MLPLayer", "MLPSupernet"]


class MLPLayer(nn.Module):
    """One hidden layer: ``edges[unit]["linear"]``, run on the slice a candidate's width selects.

    The weights sit in ``edges`` although every candidate uses the layer: each candidate uses a
    different part of them, and consolidation strategies protect ``edges`` weights by default.
    """

    def __init__(self, unit: str, in_features: int, out_features: int) -> None:
        super().__init__()
        self.unit = unit
        self.edges = nn.ModuleDict({unit: nn.ModuleDict({"linear": nn.Linear(in_features, out_features)})})

    @property
    def linear(self) -> nn.Linear:
        return cast(nn.Linear, cast(nn.ModuleDict, self.edges[self.unit])["linear"])

    def forward(self, x: torch.Tensor, pick: LayerPick) -> torch.Tensor:
        linear = self.linear
        # The columns follow the input's width, the previous layer's choice.
        out = F.linear(x, linear.weight[:pick.width, :x.shape[-1]], linear.bias[:pick.width])
        return ACTIVATIONS.get(pick.activation)(out)


class SlicedLinear(nn.Linear):
    """The head: a linear layer that reads only as many input columns as its input has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, :x.shape[-1]], self.bias)


@SUPERNETS.register("mlp")
class MLPSupernet(Supernet):
    """Flatten (``stem``) -> one stage per hidden layer (an :class:`MLPLayer`) -> linear head.

    The input size is ``prod(input_shape)``. Parameters are
    ``stages.<i>.0.edges.l<i+1>.linear.{weight,bias}`` and the head's. A stand-alone network
    (``fixed=arch``) has exact-width layers under the same names, and :meth:`path_state`
    hands it the slices. Build it as ``Supernet(space, ...)``; see :class:`Supernet`.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        mlp = cast(MLPSpace, space)
        self.stem = nn.Flatten()
        widths = self._widths(self.fixed)
        self.stages = nn.ModuleList(
            nn.Sequential(MLPLayer(mlp.layer_label(i), widths[i], widths[i + 1])) for i in range(len(mlp.layers)))
        self.make_heads(lambda: SlicedLinear(widths[-1], self.num_classes))

    def _widths(self, arch: Architecture | None) -> list[int]:
        """Input size, then each hidden layer's width: ``arch``'s, or the largest with no ``arch``."""
        mlp = cast(MLPSpace, self.space)
        hidden = ([p.width for p in mlp.picks(arch)] if arch is not None
                  else [max(layer.widths) for layer in mlp.layers])
        return [math.prod(self.input_shape), *hidden]

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        mlp = cast(MLPSpace, self.space)
        return {(mlp.layer_label(i), "linear") for i in range(len(mlp.layers))}

    def plan(self, arch: Architecture) -> list[LayerPick]:
        return cast(MLPSpace, self.space).picks(arch)

    def forward_path(self, x: torch.Tensor, plan: list[LayerPick]) -> torch.Tensor:
        x = self.stem(x)  # (B, prod(input_shape))
        for stage, pick in zip(self.stages, plan, strict=True):
            x = cast(nn.Sequential, stage)[0](x, pick)
        assert self._arch is not None
        return cast(torch.Tensor, self.head_of(self._arch)(x))  # (B, num_classes)

    def path_state(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The slices of the path's weights that ``arch`` uses, shaped like a stand-alone network's."""
        widths = self._widths(arch)
        state = {}
        for name, param in self.parameters_of(arch).items():
            tensor, parts = param.detach(), name.split(".")
            if parts[0] == "stages":  # stages.<i>.0.edges.l<i+1>.linear.<weight|bias>
                i = int(parts[1])
                rows, cols = widths[i + 1], widths[i]
                tensor = tensor[:rows, :cols] if parts[-1] == "weight" else tensor[:rows]
            elif parts[-1] == "weight":  # head.weight or heads.<n>.weight: all classes, the last width
                tensor = tensor[:, :widths[-1]]
            state[name] = tensor.clone()  # a copy of just the slice, not a view of the whole matrix
        return state

    def count_parameters(self, arch: Architecture | None = None) -> int:
        """Number of scalars ``arch`` uses: its slices, not the whole matrices (all if ``arch`` is None)."""
        if arch is None:
            return super().count_parameters()
        return sum(t.numel() for t in self.path_state(arch).values())
