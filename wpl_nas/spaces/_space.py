"""Search spaces as data: a YAML file read into a validated networkx DAG."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import optuna
import yaml

from wpl_nas.errors import ConfigError
from wpl_nas.ops import OPS
from wpl_nas.spaces._architecture import Architecture, edge_label

__all__ = ["SearchSpace", "StageSpec", "builtin_spaces", "load_space"]

_TOP_KEYS = {"name", "description", "citation", "dims", "skeleton", "cell"}
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


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A cell-based search space: a skeleton and a cell DAG with candidate ops per edge.

    Node 0 is the cell input and the last node its output; node ``j`` sums ``op(i -> j)``
    over its incoming edges. One architecture picks one op per edge; the same cell is used
    in every position of the skeleton (NAS-Bench-201 style).

    Attributes:
        name: Short name (``nb201``).
        description: One line for listings.
        citation: Where the space comes from.
        dims: 1 for sequences ``(B, C, L)``, 2 for images ``(B, C, H, W)``.
        stem_channels: Channels after the stem convolution.
        stages: The skeleton's stages.
        graph: The cell DAG; each edge carries ``ops``, a tuple of op names.
        source: The YAML file it was read from, if any.
    """

    name: str
    description: str
    citation: str
    dims: int
    stem_channels: int
    stages: tuple[StageSpec, ...]
    graph: nx.DiGraph
    source: Path | None = None

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

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(ops) for ops in self.choices.values())

    # --- architectures ---------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> Architecture:
        """Ask ``trial`` for one op per edge (one ``suggest_categorical`` per edge label)."""
        return Architecture.from_ops(
            {(s, d): trial.suggest_categorical(edge_label(s, d), list(self.graph.edges[s, d]["ops"]))
             for s, d in self.edges}
        )

    def sample(self, rng: random.Random) -> Architecture:
        """A uniformly random architecture."""
        return Architecture.from_ops({(s, d): rng.choice(self.graph.edges[s, d]["ops"]) for s, d in self.edges})

    def enumerate(self) -> Iterator[Architecture]:
        """Every architecture of the space, in a fixed order."""
        edges = self.edges
        for ops in itertools.product(*(self.graph.edges[e]["ops"] for e in edges)):
            yield Architecture(tuple((s, d, op) for (s, d), op in zip(edges, ops, strict=True)))

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

    def describe(self) -> str:
        """A multi-line, human-readable description (used by ``wpl-nas spaces show``)."""
        stages = ", ".join(f"{st.cells} cells x {st.channels} ch" for st in self.stages)
        lines = [
            f"{self.name}: {self.description}",
            f"  source:        {self.source if self.source else '(built in code)'}",
            f"  citation:      {self.citation}",
            f"  data:          {self.dims}-D",
            f"  skeleton:      stem {self.stem_channels} ch; {stages}; residual reduction between stages",
            f"  cell:          {self.num_nodes} nodes (0 = input, {self.output_node} = output), "
            f"{len(self.edges)} edges",
            f"  architectures: {self.size:,}",
            "  edges and op choices:",
        ]
        lines += [f"    {label:>6}: {' | '.join(ops)}" for label, ops in self.choices.items()]
        example = next(self.enumerate())
        lines.append(f"  example:       {example}")
        return "\n".join(lines)

    # --- loading ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read and validate a space file.

        Raises:
            ConfigError: the file is missing, not YAML, or invalid; the message names the
                file, the field and the problem.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read search space file {str(path)!r}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | None = None) -> SearchSpace:
        """Build a space from the parsed YAML mapping (see ``search_spaces/*.yaml``)."""
        where = str(source) if source else "search space"

        def fail(field: str, problem: str) -> ConfigError:
            return ConfigError(f"{where}: field {field!r}: {problem}")

        def mapping(value: Any, field: str, keys: set[str]) -> Mapping[str, Any]:
            if not isinstance(value, Mapping):
                raise fail(field, f"must be a mapping, but got {value!r}")
            unknown = sorted(set(value) - keys)
            if unknown:
                raise fail(field, f"unknown key(s) {unknown}; valid keys: {sorted(keys)}")
            missing = sorted(keys - set(value) - {"description", "citation"})
            if missing:
                raise fail(field, f"missing key(s) {missing}")
            return value

        def positive_int(value: Any, field: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(field, f"must be a positive integer, but got {value!r}")
            return value

        top = mapping(data, "<top level>", _TOP_KEYS)
        name = top["name"]
        if not isinstance(name, str) or not name:
            raise fail("name", f"must be a non-empty string, but got {name!r}")
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
            name=name,
            description=str(top.get("description", "")),
            citation=str(top.get("citation", "")),
            dims=dims,
            stem_channels=stem,
            stages=tuple(stages),
            graph=graph,
            source=source,
        )


def builtin_spaces() -> dict[str, Path]:
    """``{name: file}`` for the spaces shipped in ``search_spaces/``."""
    try:
        root = Path(str(resources.files("wpl_nas.search_spaces")))
    except ModuleNotFoundError:
        # Imported straight from a source checkout (the repository root is on sys.path), where
        # the installed name does not exist: the files sit at the top of the repository.
        root = Path(__file__).resolve().parents[2] / "search_spaces"
    return {f.stem: f for f in sorted(root.glob("*.yaml"))}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a built-in space by name, or a user's space file by path.

    Raises:
        ConfigError: unknown name (the message lists the built-in spaces) or invalid file.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return SearchSpace.from_yaml(text)
    spaces = builtin_spaces()
    if text not in spaces:
        raise ConfigError(
            f"unknown search space {text!r}; valid choices: {', '.join(spaces)} "
            "(or a path to a space .yaml file)"
        )
    return SearchSpace.from_yaml(spaces[text])
