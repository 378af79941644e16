"""An example wpl-nas plugin: a dataset (``demo-blobs``), a kind of search space (``demo-chain``) with
its supernet, and a space of that kind (``demo-chain.yaml``, next to this file).

wpl-nas imports this module through the entry points of ``pyproject.toml``; the decorators below
register what it adds. The same file, dropped into ``wpl_nas/data/`` or ``wpl_nas/spaces/``,
would register the same things from inside wpl-nas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import wpl_nas
from wpl_nas.spaces import SPACE_KINDS, Architecture, SearchSpace, SpecReader
from wpl_nas.supernet import SUPERNETS, Supernet

# --- a dataset ---------------------------------------------------------------------------------


@wpl_nas.register_dataset("demo-blobs", recipe=wpl_nas.Recipe(lr=0.05, weight_decay=5e-4, batch_size=64))
def demo_blobs(*, val_fraction: float, seed: int) -> wpl_nas.DataBundle:
    """Four Gaussian blobs in 16 dimensions, 1000 points (200 of them the test split), made here:
    no files. ``val_fraction`` and ``seed`` set the validation split, as ``--val-fraction`` and
    ``--seed`` ask."""
    gen = torch.Generator().manual_seed(0)  # the data is always the same; only the split follows `seed`
    centres = 2.0 * torch.randn(4, 16, generator=gen)
    labels = torch.arange(1000) % 4
    points = centres[labels] + torch.randn(1000, 16, generator=gen)
    return wpl_nas.DataBundle.from_tensors(points[:800], labels[:800], x_test=points[800:], y_test=labels[800:],
                                           val_fraction=val_fraction, seed=seed)


# --- a kind of space, and its supernet ---------------------------------------------------------

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


@SPACE_KINDS.register("demo-chain")
@dataclass(frozen=True, eq=False, kw_only=True)
class ChainSpace(SearchSpace):
    """Hidden layers of ``units`` units on the flattened input; each layer picks an activation and
    has its own weights for each (so, unlike the ``mlp`` kind, candidates share only what they
    pick alike). Choices ``layer1``, ``layer2``, ...; any fixed-size input (``dims`` None)."""

    kind = "demo-chain"
    layers: int
    units: int
    activations: tuple[str, ...]

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        return {f"layer{i + 1}": self.activations for i in range(self.layers)}

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> SearchSpace:
        keys = {"kind", "name", "description", "citation", "layers", "units", "activations"}
        spec = read.mapping(data, "<top level>", keys)
        return cls(**cls.common(spec, read), dims=None, source=source,
                   layers=read.positive_int(spec["layers"], "layers"),
                   units=read.positive_int(spec["units"], "units"),
                   activations=read.names(spec["activations"], "activations", ACTIVATIONS))


class ChainLayer(nn.Module):
    """One hidden layer: a ``Linear -> activation`` per activation the layer may pick, kept in
    ``edges[label][activation]`` (the weights only some candidates use: see :class:`Supernet`)."""

    def __init__(self, label: str, c_in: int, c_out: int, activations: tuple[str, ...]) -> None:
        super().__init__()
        self.label = label
        self.edges = nn.ModuleDict({label: nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(c_in, c_out), ACTIVATIONS[name]()) for name in activations})})

    def forward(self, x: torch.Tensor, activation: str) -> torch.Tensor:
        return cast(torch.Tensor, cast(nn.ModuleDict, self.edges[self.label])[activation](x))


@SUPERNETS.register("demo-chain")
class ChainSupernet(Supernet):
    """Flatten (``stem``), one stage per hidden layer, a linear head. A stand-alone network
    (``fixed=arch``) holds only the activations ``arch`` picks, under the same names."""

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        chain = cast(ChainSpace, space)
        self.stem = nn.Flatten()
        width = math.prod(self.input_shape)
        self.stages = nn.ModuleList()
        for label, activations in chain.choices.items():
            picked = (self.fixed[label],) if self.fixed is not None else activations
            self.stages.append(nn.Sequential(ChainLayer(label, width, chain.units, picked)))
            width = chain.units
        self.make_heads(lambda: nn.Linear(chain.units, self.num_classes))

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        return {(label, arch[label]) for label in self.space.choices}

    def forward_path(self, x: torch.Tensor, plan: Architecture) -> torch.Tensor:
        x = self.stem(x)
        for stage, label in zip(self.stages, self.space.choices, strict=True):
            x = cast(nn.Sequential, stage)[0](x, plan[label])
        return cast(torch.Tensor, self.head_of(plan)(x))
