"""The ``mlp`` kind: a multi-layer perceptron with a width and an activation chosen per hidden layer.

A family after the WPL paper's two-model MNIST experiment, in which plain stacks of layers
share the weights of their first layers (Benyahia et al., ICML 2019). The input is
flattened, so any fixed-size data fits. Candidates share weights by slicing: hidden layer ``l``
keeps one weight matrix of the largest width, and a candidate of width ``w`` after a layer of
width ``w'`` uses its first ``w`` rows and ``w'`` columns (as in slimmable networks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F

from wpl_nas.registry import Registry
from wpl_nas.spaces._architecture import Architecture
from wpl_nas.spaces._space import SPACE_KINDS, SearchSpace, SpecReader

__all__ = ["ACTIVATIONS", "MAX_MLP_BLOCKS", "MLPLayerSpec", "MLPSpace"]

#: The most weight blocks an ``mlp`` supernet may have (the built-in space has 24).
MAX_MLP_BLOCKS = 20_000

#: Element-wise activations a hidden layer may apply, by name. They have no parameters, so
#: candidates that differ only in an activation share every weight.
ACTIVATIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("activation")
ACTIVATIONS.add("relu", torch.relu)
ACTIVATIONS.add("tanh", torch.tanh)
ACTIVATIONS.add("sigmoid", torch.sigmoid)
ACTIVATIONS.add("gelu", F.gelu)
ACTIVATIONS.add("elu", F.elu)
ACTIVATIONS.add("leaky_relu", F.leaky_relu)
ACTIVATIONS.add("identity", lambda t: t)

_TOP_KEYS = {"kind", "name", "description", "citation", "layers", "widths", "activations"}
_LAYER_KEYS = {"widths", "activations"}


@dataclass(frozen=True)
class MLPLayerSpec:
    """One hidden layer's choices: its output widths and its activations."""

    widths: tuple[int, ...]
    activations: tuple[str, ...]


@dataclass(frozen=True)
class LayerPick:
    """What one architecture runs in one hidden layer."""

    width: int
    activation: str


@SPACE_KINDS.register("mlp")
@dataclass(frozen=True, eq=False, kw_only=True)
class MLPSpace(SearchSpace):
    """Hidden layers ``Linear -> activation`` on the flattened input, then a linear head.

    Attributes (besides :class:`SearchSpace`'s; ``dims`` is None: any fixed-size input):
        layers: The hidden layers' choices, in order.
    """

    kind = "mlp"
    layers: tuple[MLPLayerSpec, ...]

    @staticmethod
    def layer_label(index: int) -> str:
        """``l1``, ``l2``, ...: the prefix of hidden layer ``index``'s (0-based) choice labels and
        its unit in the supernet's ``edges``."""
        return f"l{index + 1}"

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for i, layer in enumerate(self.layers):
            out[f"{self.layer_label(i)}/width"] = tuple(str(w) for w in layer.widths)
            out[f"{self.layer_label(i)}/activation"] = layer.activations
        return out

    def picks(self, arch: Architecture) -> list[LayerPick]:
        """What ``arch`` runs in each hidden layer."""
        return [LayerPick(int(arch[f"{label}/width"]), arch[f"{label}/activation"])
                for label in (self.layer_label(i) for i in range(len(self.layers)))]

    def summary_lines(self) -> list[str]:
        lines = ["  data:          any fixed-size input, flattened",
                 "  sharing:       one weight matrix per layer at the largest width; a candidate uses its "
                 "top-left slice"]
        for i, layer in enumerate(self.layers):
            head = f"layer {self.layer_label(i)}:"
            lines.append(f"  {head:<15}linear to {'|'.join(map(str, layer.widths))} units, "
                         f"then {'|'.join(layer.activations)}")
        lines.append("  head:          linear to the classes")
        return lines

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """The chain input -> hidden layers -> head, each layer's incoming edge labelled with its
        width and activation (all candidates' with no ``arch``)."""
        graph = nx.DiGraph()
        nodes = ["in", *(self.layer_label(i) for i in range(len(self.layers))), "out"]
        for x, node in enumerate(nodes):
            graph.add_node(node, label=node, pos=(float(x), 0.0))
        picks = self.picks(arch) if arch is not None else None
        for i, layer in enumerate(self.layers):
            label = (f"{picks[i].width}\n{picks[i].activation}" if picks is not None
                     else f"{'|'.join(map(str, layer.widths))}\n{'|'.join(layer.activations)}")
            graph.add_edge(nodes[i], nodes[i + 1], label=label, live=True)
        graph.add_edge(nodes[-2], "out", label="linear", live=True)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> MLPSpace:
        top = read.mapping(data, "<top level>", _TOP_KEYS,
                           optional=("description", "citation", "kind", "widths", "activations"))
        # Top-level widths and activations are the defaults of layers that do not give their own.
        default_widths = read.int_choices(top["widths"], "widths") if "widths" in top else None
        default_acts = (read.names(top["activations"], "activations", ACTIVATIONS)
                        if "activations" in top else None)
        raw = top["layers"]
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw_layers: list[Any] = [{} for _ in range(read.positive_int(raw, "layers"))]
        elif isinstance(raw, list) and raw:
            raw_layers = raw
        else:
            raise read.fail("layers", "must be a positive number of hidden layers or a non-empty list of "
                            f"per-layer mappings (keys {sorted(_LAYER_KEYS)}), but got {raw!r}")
        layers = []
        for i, item in enumerate(raw_layers):
            field = f"layers[{i}]" if isinstance(raw, list) else "layers"
            spec = read.mapping({} if item is None else item, field, _LAYER_KEYS, optional=_LAYER_KEYS)
            if "widths" in spec:
                widths = read.int_choices(spec["widths"], f"{field}.widths")
            elif default_widths is not None:
                widths = default_widths
            else:
                raise read.fail(f"{field}.widths", "missing, and there is no top-level 'widths' to default to")
            if "activations" in spec:
                acts = read.names(spec["activations"], f"{field}.activations", ACTIVATIONS)
            elif default_acts is not None:
                acts = default_acts
            else:
                raise read.fail(f"{field}.activations",
                                "missing, and there is no top-level 'activations' to default to")
            layers.append(MLPLayerSpec(widths, acts))
        # The supernet keeps each layer's matrix as a grid of blocks cut at the width choices of the
        # layer and the one before: many choices make millions of modules, whose building would hang.
        counts = [len(layer.widths) for layer in layers]
        blocks = counts[0] + sum(a * b for a, b in itertools.pairwise(counts)) + counts[-1]
        if blocks > MAX_MLP_BLOCKS:
            raise read.fail("layers", f"makes a supernet of {blocks:,} weight blocks (one per pair of width choices "
                            f"of adjacent layers), more than the limit of {MAX_MLP_BLOCKS:,}; give the layers "
                            "fewer width choices")
        return cls(**cls.common(top, read), dims=None, source=source, layers=tuple(layers))
