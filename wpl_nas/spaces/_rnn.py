"""The ``rnn`` kind: the ENAS recurrent cell, a DAG of nodes each picking one input and an activation.

At each time step node 1 reads the embedded token ``x_t`` and the previous hidden state
``h_{t-1}``; every later node ``j`` reads the output of one earlier node ``i`` (its choice
``n<j>/input``) through weights private to the edge ``i -> j``, and applies its activation
(``n<j>/act``) inside a highway gate. The new hidden state is the mean of the loose ends, the
nodes no other node reads. So one architecture is a choice of input per node ``2..N`` and of
activation per node ``1..N`` (Pham et al., ICML 2018; the WPL paper's main setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from wpl_nas.spaces._architecture import Architecture
from wpl_nas.spaces._space import SPACE_KINDS, SearchSpace, SpecReader

__all__ = ["ACTIVATIONS", "RNNSpace"]

#: The activations a node may apply (ENAS's four).
ACTIVATIONS = ("tanh", "relu", "identity", "sigmoid")
_TOP_KEYS = {"kind", "name", "description", "citation", "cell", "model"}
_CELL_KEYS = {"nodes", "activations"}
_MODEL_KEYS = {"embedding", "hidden"}


@SPACE_KINDS.register("rnn")
@dataclass(frozen=True, eq=False, kw_only=True)
class RNNSpace(SearchSpace):
    """The ENAS recurrent cell space for word-level language modelling (inputs are token ids).

    Attributes (besides :class:`SearchSpace`'s; ``dims`` is 0: token sequences):
        nodes: Nodes of the cell (ENAS: 12).
        activations: The activations a node may pick.
        embedding: Size of the token embedding.
        hidden: Size of the hidden state (every node's output).
    """

    kind = "rnn"
    nodes: int
    activations: tuple[str, ...]
    embedding: int
    hidden: int

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for j in range(1, self.nodes + 1):
            if j > 1:
                out[f"n{j}/input"] = tuple(str(i) for i in range(1, j))
            out[f"n{j}/act"] = self.activations
        return out

    def inputs(self, arch: Architecture) -> dict[int, int]:
        """``{node: the node it reads}`` for nodes ``2..N``."""
        return {j: int(arch[f"n{j}/input"]) for j in range(2, self.nodes + 1)}

    def loose_ends(self, arch: Architecture) -> list[int]:
        """The nodes no other node reads: their mean is the new hidden state."""
        read = set(self.inputs(arch).values())
        return [j for j in range(1, self.nodes + 1) if j not in read]

    def summary_lines(self) -> list[str]:
        return [
            "  data:          token sequences (word-level language modelling; score: perplexity)",
            f"  model:         embedding {self.embedding}, hidden {self.hidden}; decoder to the vocabulary",
            f"  cell:          {self.nodes} nodes; node 1 reads x_t and h_(t-1); node j reads one earlier "
            "node; h_t = mean of the loose ends",
        ]

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """The cell: ``arch``'s edges labelled with the reading node's activation; without
        ``arch``, every possible edge, faint."""
        graph = nx.DiGraph()
        graph.add_node("in", label="x,h", pos=(0.0, 0.0))
        for j in range(1, self.nodes + 1):
            graph.add_node(j, label=str(j), pos=(float(j), 0.0))
        graph.add_node("out", label="h_t", pos=(float(self.nodes + 1), 0.0))
        if arch is None:
            graph.add_edge("in", 1, label="\n".join(self.activations), live=True)
            for j in range(2, self.nodes + 1):
                for i in range(1, j):
                    graph.add_edge(i, j, label="", live=False)
            return graph
        graph.add_edge("in", 1, label=arch["n1/act"], live=True)
        for j, i in self.inputs(arch).items():
            graph.add_edge(i, j, label=arch[f"n{j}/act"], live=True)
        for j in self.loose_ends(arch):
            graph.add_edge(j, "out", label="", live=True)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> RNNSpace:
        top = read.mapping(data, "<top level>", _TOP_KEYS)
        cell = read.mapping(top["cell"], "cell", _CELL_KEYS)
        model = read.mapping(top["model"], "model", _MODEL_KEYS)
        nodes = read.positive_int(cell["nodes"], "cell.nodes")
        return cls(
            **cls.common(top, read),
            dims=0,
            source=source,
            nodes=nodes,
            activations=read.names(cell["activations"], "cell.activations", ACTIVATIONS),
            embedding=read.positive_int(model["embedding"], "model.embedding"),
            hidden=read.positive_int(model["hidden"], "model.hidden"),
        )
