"""The ``cell`` kind: one cell DAG with a choice of operation per edge, stacked on a skeleton."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from wpl_nas.errors import ConfigError
from wpl_nas.ops import OPS
from wpl_nas.spaces._architecture import Architecture, edge_label
from wpl_nas.spaces._space import SPACE_KINDS, SearchSpace, SpecReader

__all__ = ["CellSpace", "StageSpec"]

_TOP_KEYS = {"kind", "name", "description", "citation", "dims", "skeleton", "cell"}
_SKELETON_KEYS = {"stem_channels", "stages"}
_STAGE_KEYS = {"channels", "cells"}
_CELL_KEYS = {"nodes", "edges", "ops"}


@dataclass(frozen=True)
class StageSpec:
    """One stage of the skeleton: ``cells`` copies of the cell at ``channels`` channels.

    Every stage after the first starts with a residual reduction block (stride 2).
    """

    channels: int
    cells: int


@SPACE_KINDS.register("cell")
@dataclass(frozen=True, eq=False, kw_only=True)
class CellSpace(SearchSpace):
    """A cell-based search space: a skeleton and a cell DAG with candidate ops per edge.

    Node 0 is the cell input and the last node its output; node ``j`` sums ``op(i -> j)``
    over its incoming edges. One architecture picks one op per edge; the same cell is used
    in every position of the skeleton (NAS-Bench-201 style).

    Attributes (besides :class:`SearchSpace`'s; ``dims`` is 1 or 2):
        stem_channels: Channels after the stem convolution.
        stages: The skeleton's stages.
        graph: The cell DAG; each edge carries ``ops``, a tuple of op names.
    """

    kind = "cell"
    stem_channels: int
    stages: tuple[StageSpec, ...]
    graph: nx.DiGraph

    # --- structure -------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return int(self.graph.number_of_nodes())

    @property
    def output_node(self) -> int:
        return self.num_nodes - 1

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Edges in canonical order (by target node, then source)."""
        return sorted(self.graph.edges, key=lambda e: (e[1], e[0]))

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        """``{edge label: candidate ops}``, the Optuna search space."""
        return {edge_label(s, d): self.graph.edges[s, d]["ops"] for s, d in self.edges}

    # --- architectures ---------------------------------------------------------------
    def make(self, values: Mapping[str, str], *, head: int = 0) -> Architecture:
        """The cell architecture with op ``values[edge label]`` on each edge."""
        return Architecture.from_ops({(s, d): values[edge_label(s, d)] for s, d in self.edges}, head=head)

    def validate(self, arch: Architecture) -> Architecture:
        """Return ``arch`` if it belongs to this space.

        Raises:
            ConfigError: an edge is missing or extra, or an op is not a choice of its edge.
        """
        given = {(s, d): op for s, d, op in arch.edges}
        labels = [edge_label(s, d) for s, d, _ in arch.edges]
        if len(given) != len(labels):
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            raise ConfigError(
                f"architecture {str(arch)!r} does not fit space {self.name!r}: "
                f"edge(s) {', '.join(repeated)} given more than once"
            )
        if set(given) != set(self.graph.edges):
            missing = sorted(set(self.graph.edges) - set(given))
            extra = sorted(set(given) - set(self.graph.edges))
            raise ConfigError(
                f"architecture {str(arch)!r} does not fit space {self.name!r}: "
                f"missing edges {missing}, unexpected edges {extra}"
            )
        for (s, d), op in given.items():
            ops = self.graph.edges[s, d]["ops"]
            if op not in ops:
                raise ConfigError(
                    f"architecture {str(arch)!r}: op {op!r} on edge {edge_label(s, d)} is not in "
                    f"space {self.name!r}; valid choices: {', '.join(ops)}"
                )
        return arch

    def parse(self, text: str) -> Architecture:
        """Parse an architecture string and check it against this space."""
        return self.validate(Architecture.parse(text))

    def active_edges(self, arch: Architecture) -> list[tuple[int, int, str]]:
        """The non-``none`` edges whose result reaches the cell output, in canonical order.

        Edges into a node that feeds nothing downstream are dead: the supernet skips them
        and they receive no gradient, so they are not part of the candidate's path.
        """
        live = nx.DiGraph()
        live.add_nodes_from(self.graph.nodes)
        live.add_edges_from((s, d) for s, d, op in arch.edges if op != "none")
        useful = nx.ancestors(live, self.output_node) | {self.output_node}
        return [(s, d, op) for s, d, op in arch.edges if op != "none" and d in useful]

    def summary_lines(self) -> list[str]:
        stages = ", ".join(f"{st.cells} cells x {st.channels} ch" for st in self.stages)
        return [
            f"  data:          {self.dims}-D",
            f"  skeleton:      stem {self.stem_channels} ch; {stages}; residual reduction between stages",
            f"  cell:          {self.num_nodes} nodes (0 = input, {self.output_node} = output), "
            f"{len(self.edges)} edges",
        ]

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """The cell DAG: with ``arch``, its live edges labelled with their ops (the others faint);
        without, every edge labelled with its candidate ops."""
        live = ({(s, d): op for s, d, op in self.active_edges(arch)} if arch is not None
                else {(s, d): "\n".join(ops) for (s, d), ops in zip(self.edges, self.choices.values(), strict=True)})
        graph = nx.DiGraph()
        for n in self.graph.nodes:
            graph.add_node(n, label=str(n), pos=(float(n), 0.0))
        for s, d in self.edges:
            graph.add_edge(s, d, label=live.get((s, d), ""), live=(s, d) in live)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> CellSpace:
        fail, mapping, positive_int = read.fail, read.mapping, read.positive_int
        top = mapping(data, "<top level>", _TOP_KEYS)
        dims = top["dims"]
        if dims not in (1, 2):
            raise fail("dims", f"must be 1 or 2, but got {dims!r}")

        skeleton = mapping(top["skeleton"], "skeleton", _SKELETON_KEYS)
        stem = positive_int(skeleton["stem_channels"], "skeleton.stem_channels")
        raw_stages = skeleton["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise fail("skeleton.stages", f"must be a non-empty list, but got {raw_stages!r}")
        stages = []
        for i, raw in enumerate(raw_stages):
            st = mapping(raw, f"skeleton.stages[{i}]", _STAGE_KEYS)
            stages.append(StageSpec(positive_int(st["channels"], f"skeleton.stages[{i}].channels"),
                                    positive_int(st["cells"], f"skeleton.stages[{i}].cells")))

        cell = mapping(top["cell"], "cell", _CELL_KEYS)
        nodes = positive_int(cell["nodes"], "cell.nodes")
        if nodes < 2:
            raise fail("cell.nodes", f"a cell needs at least 2 nodes (input and output), but got {nodes}")
        ops = cell["ops"]
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            raise fail("cell.ops", f"must be a non-empty list of op names, but got {ops!r}")
        for op in ops:
            if op not in OPS:
                raise fail("cell.ops", OPS.unknown_message(op))
        if len(set(ops)) != len(ops):
            raise fail("cell.ops", f"lists an op twice: {ops}")

        raw_edges = cell["edges"]
        if raw_edges == "all":
            edge_list = [(i, j) for j in range(nodes) for i in range(j)]
        elif isinstance(raw_edges, list):
            edge_list = []
            for e in raw_edges:
                if not (isinstance(e, list) and len(e) == 2 and all(isinstance(n, int) for n in e)):
                    raise fail("cell.edges", f"each edge must be [src, dst], but got {e!r}")
                if not all(0 <= n < nodes for n in e):
                    raise fail("cell.edges", f"edge {e} names a node outside 0..{nodes - 1}")
                edge_list.append((e[0], e[1]))
        else:
            raise fail("cell.edges", f"must be 'all' or a list of [src, dst] pairs, but got {raw_edges!r}")

        graph = nx.DiGraph()
        graph.add_nodes_from(range(nodes))
        graph.add_edges_from(edge_list, ops=tuple(ops))
        if not nx.is_directed_acyclic_graph(graph):
            cycle = nx.find_cycle(graph)
            raise fail("cell.edges", f"the cell must be acyclic, but has the cycle {cycle}")
        backward = sorted((s, d) for s, d in graph.edges if s >= d)
        if backward:
            # Cells run (and architecture strings list) their edges in target-node order, which
            # is only an evaluation order if every edge goes from a lower to a higher node.
            raise fail("cell.edges", f"edge(s) {[list(e) for e in backward]} go backwards; number the nodes so "
                       "that every edge [src, dst] has src < dst")
        unreachable = sorted(set(graph.nodes) - nx.descendants(graph, 0) - {0})
        if unreachable:
            raise fail("cell.edges", f"node(s) {unreachable} cannot be reached from the input node 0")
        dead_ends = sorted(set(graph.nodes) - nx.ancestors(graph, nodes - 1) - {nodes - 1})
        if dead_ends:
            raise fail("cell.edges", f"node(s) {dead_ends} do not lead to the output node {nodes - 1}")

        return cls(
            **cls.common(top, read),
            dims=dims,
            stem_channels=stem,
            stages=tuple(stages),
            graph=graph,
            source=source,
        )
