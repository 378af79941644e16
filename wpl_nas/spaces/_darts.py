"""The ``darts`` kind: the DARTS / ENAS micro cell, a normal and a reduction cell of picked inputs and ops.

A cell reads the outputs of the two previous cells, ``c_{k-2}`` (node 0) and ``c_{k-1}``
(node 1). Each intermediate node ``j = 2 .. nodes + 1`` picks two inputs among the earlier
nodes and an operation for each, and sums the two results; the picks are independent (ENAS
style: the same input may be picked twice). The cell's output concatenates the intermediate
nodes: all of them (DARTS) or only the loose ends, those no other node reads (ENAS). One
architecture picks a normal cell and a reduction cell; the reduction cells sit at 1/3 and 2/3
of the depth and their ops on the edges from the cell inputs have stride 2 (Liu et al., ICLR
2019; Pham et al., ICML 2018).

Choice labels are ``<cell>/n<j>/in<k>`` (the input node of slot ``k`` = 0, 1 of node ``j``, as
``"0"``, ``"1"``, ...) and ``<cell>/n<j>/op<k>`` (its op), for ``<cell>`` = ``normal``, ``reduce``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from wpl_nas.errors import ConfigError
from wpl_nas.ops import OPS
from wpl_nas.spaces._architecture import Architecture, Genotype
from wpl_nas.spaces._space import SPACE_KINDS, SearchSpace, SpecReader

__all__ = ["CELL_TYPES", "OUTPUTS", "DartsSpace"]

#: The two cells an architecture picks.
CELL_TYPES = ("normal", "reduce")
#: What a cell outputs: the concatenation of all intermediate nodes, or of the loose ends.
OUTPUTS = ("all", "loose_ends")
_TOP_KEYS = {"kind", "name", "description", "citation", "dims", "skeleton", "cell"}
_SKELETON_KEYS = {"channels", "cells", "stem_multiplier"}
_CELL_KEYS = {"nodes", "ops", "output"}
_INPUT_NAMES = ("k-2", "k-1")


@SPACE_KINDS.register("darts")
@dataclass(frozen=True, eq=False, kw_only=True)
class DartsSpace(SearchSpace):
    """The DARTS / ENAS micro cell space: a normal and a reduction cell stacked ``cells`` times.

    Attributes (besides :class:`SearchSpace`'s; ``dims`` is 1 or 2):
        channels: Channels of each node in the first cells; doubled at every reduction cell.
        cells: Number of cells in the network (reduction cells included).
        stem_multiplier: The stem convolution outputs ``stem_multiplier * channels`` channels
            (DARTS and ENAS: 3).
        nodes: Intermediate nodes per cell (DARTS: 4, ENAS: 5).
        ops: The ops a slot may pick (every op also runs at stride 2, as a reduction cell needs).
        output: ``all`` (DARTS) or ``loose_ends`` (ENAS): which intermediate nodes the cell's
            output concatenates.
    """

    kind = "darts"
    channels: int
    cells: int
    stem_multiplier: int = 3
    nodes: int
    ops: tuple[str, ...]
    output: str = "all"

    # --- structure -------------------------------------------------------------------
    @property
    def intermediate(self) -> range:
        """The intermediate nodes ``2 .. nodes + 1`` (0 and 1 are the cell inputs)."""
        return range(2, self.nodes + 2)

    @property
    def reduction_cells(self) -> tuple[int, ...]:
        """Positions of the reduction cells: ``cells // 3`` and ``2 * cells // 3``, as in DARTS
        (one position when they coincide, for fewer than 3 cells)."""
        return tuple(sorted({self.cells // 3, 2 * self.cells // 3}))

    @staticmethod
    def unit(cell: str, src: int, dst: int) -> str:
        """The supernet unit of edge ``src -> dst`` of cell type ``cell`` (``normal/0->2``)."""
        return f"{cell}/{src}->{dst}"

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        """``{label: values}``: per cell type and node, input and op of slot 0, then of slot 1."""
        out: dict[str, tuple[str, ...]] = {}
        for cell in CELL_TYPES:
            for j in self.intermediate:
                for k in (0, 1):
                    out[f"{cell}/n{j}/in{k}"] = tuple(str(i) for i in range(j))
                    out[f"{cell}/n{j}/op{k}"] = self.ops
        return out

    # --- architectures ---------------------------------------------------------------
    def picks(self, arch: Architecture, cell: str) -> list[tuple[int, int, str]]:
        """``(src, dst, op)`` of every slot of cell type ``cell``, by node then slot (``none`` included)."""
        return [(int(arch[f"{cell}/n{j}/in{k}"]), j, arch[f"{cell}/n{j}/op{k}"])
                for j in self.intermediate for k in (0, 1)]

    def live_picks(self, arch: Architecture, cell: str) -> list[tuple[int, int, str]]:
        """The picks that compute something: those whose op is not ``none``.

        Every intermediate node reaches the cell output (it is concatenated, or read by a later
        node that is), so apart from ``none`` nothing is dead.
        """
        return [(s, d, op) for s, d, op in self.picks(arch, cell) if op != "none"]

    def concat(self, arch: Architecture, cell: str) -> tuple[int, ...]:
        """The intermediate nodes the output of cell type ``cell`` concatenates.

        For ``loose_ends``, a node read by later nodes only through ``none`` counts as unread:
        its value would otherwise be computed for nothing.
        """
        if self.output == "all":
            return tuple(self.intermediate)
        read = {s for s, _, _ in self.live_picks(arch, cell)}
        return tuple(j for j in self.intermediate if j not in read)

    def from_darts_genotype(self, normal: Sequence[tuple[str, int]], reduce: Sequence[tuple[str, int]],
                            *, head: int = 0) -> Architecture:
        """The architecture of a genotype written as in DARTS's code: per cell, a list of
        ``(op, input)`` pairs, two per intermediate node in node order.

        Raises:
            ConfigError: a list has the wrong length, or an op or input is not in this space.
        """
        values: dict[str, str] = {}
        for cell, pairs in zip(CELL_TYPES, (normal, reduce), strict=True):
            if len(pairs) != 2 * self.nodes:
                raise ConfigError(f"the {cell} cell of a genotype of space {self.name!r} needs "
                                  f"{2 * self.nodes} (op, input) pairs (2 per node), but got {len(pairs)}")
            for n, (op, src) in enumerate(pairs):
                j, k = 2 + n // 2, n % 2
                values[f"{cell}/n{j}/in{k}"] = str(src)
                values[f"{cell}/n{j}/op{k}"] = str(op)
        return self.validate(Genotype.of(values, head=head))

    # --- reading and drawing ----------------------------------------------------------
    def summary_lines(self) -> list[str]:
        output = ("concatenation of all intermediate nodes" if self.output == "all"
                  else "concatenation of the loose ends (nodes no other node reads)")
        return [
            f"  data:          {self.dims}-D",
            f"  skeleton:      stem conv to {self.stem_multiplier}x{self.channels} ch; {self.cells} cells at "
            f"{self.channels} ch, channels doubling at the reduction cells {list(self.reduction_cells)} "
            "(stride 2 on their input edges)",
            f"  cell:          inputs c_(k-2), c_(k-1) (nodes 0, 1) + {self.nodes} nodes; node j sums 2 picked "
            f"earlier nodes through 2 picked ops; output: {output}",
        ]

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """Both cells, the normal one on row ``y = 0`` and the reduction one below it.

        With ``arch``: its picks, labelled with their ops (``none`` picks faint), and the
        concatenated nodes joined to ``out``. Without: every possible input edge, faint.
        """
        graph = nx.DiGraph()
        out = self.nodes + 2
        # Edges that skip nodes are drawn as arcs above their row, the longest (about `nodes`
        # nodes long) highest: the reduction row sits low enough that its arcs stay below the
        # normal row.
        gap = 1.0 + 0.4 * (self.nodes + 1)
        for row, cell in enumerate(CELL_TYPES):
            y = -gap * row
            graph.add_node((cell, "name"), label=cell, pos=(-1.0, y))
            for n in range(out + 1):
                label = _INPUT_NAMES[n] if n < 2 else ("out" if n == out else str(n))
                graph.add_node((cell, n), label=label, pos=(float(n), y))
            if arch is None:
                for j in self.intermediate:
                    for i in range(j):
                        graph.add_edge((cell, i), (cell, j), label="", live=False)
                    graph.add_edge((cell, j), (cell, out), label="", live=self.output == "all")
                continue
            ops: dict[tuple[int, int], list[str]] = {}
            for s, d, op in self.picks(arch, cell):
                ops.setdefault((s, d), []).append(op)
            for (s, d), names in ops.items():
                live = [op for op in names if op != "none"]
                # Both slots of a node may read the same input: one arrow, both ops on it.
                graph.add_edge((cell, s), (cell, d), label="+".join(live), live=bool(live))
            for j in self.concat(arch, cell):
                graph.add_edge((cell, j), (cell, out), label="", live=True)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> DartsSpace:
        top = read.mapping(data, "<top level>", _TOP_KEYS)
        dims = top["dims"]
        if dims not in (1, 2):
            raise read.fail("dims", f"must be 1 or 2, but got {dims!r}")
        skeleton = read.mapping(top["skeleton"], "skeleton", _SKELETON_KEYS, optional=("stem_multiplier",))
        cell = read.mapping(top["cell"], "cell", _CELL_KEYS, optional=("output",))
        ops = read.names(cell["ops"], "cell.ops", OPS)
        if set(ops) == {"none"}:
            raise read.fail("cell.ops", "needs at least one op other than 'none' (with only 'none' every cell "
                            "outputs zeros)")
        output = cell.get("output", "all")
        if output not in OUTPUTS:
            raise read.fail("cell.output", f"unknown value {output!r}; valid choices: {', '.join(OUTPUTS)}")
        return cls(
            **cls.common(top, read),
            dims=dims,
            source=source,
            channels=read.positive_int(skeleton["channels"], "skeleton.channels"),
            cells=read.positive_int(skeleton["cells"], "skeleton.cells"),
            stem_multiplier=read.positive_int(skeleton.get("stem_multiplier", 3), "skeleton.stem_multiplier"),
            nodes=read.positive_int(cell["nodes"], "cell.nodes"),
            ops=ops,
            output=output,
        )
