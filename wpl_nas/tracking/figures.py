"""Figures for TensorBoard and reports (matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wpl_nas.spaces import Architecture, SearchSpace

__all__ = ["cell_figure", "png_bytes", "retention_heatmap", "space_figure"]


def retention_heatmap(matrix: Mapping[int, Mapping[int, float]], *, title: str = "retention") -> Figure:
    """The retention matrix as a heatmap: a row per candidate, a column per trial after which the
    pool was re-scored, the score as colour (blank where the candidate was not scored).

    Args:
        matrix: ``{candidate trial: {after trial: score}}`` (:meth:`RetainedPool.matrix`).
        title: The figure's title.
    """
    rows = sorted(matrix)
    cols = sorted({j for scores in matrix.values() for j in scores})
    grid = np.full((max(len(rows), 1), max(len(cols), 1)), np.nan)
    for r, trial in enumerate(rows):
        for c, after in enumerate(cols):
            if after in matrix[trial]:
                grid[r, c] = matrix[trial][after]
    fig = Figure(figsize=(min(2.0 + 0.25 * len(cols), 14.0), min(1.5 + 0.22 * len(rows), 12.0)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0,
                      vmax=float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0)
    ax.set_xlabel("after trial")
    ax.set_ylabel("candidate (trial)")
    step = max(1, len(cols) // 12)
    ax.set_xticks(range(0, len(cols), step), [str(c) for c in cols[::step]])
    step = max(1, len(rows) // 16)
    ax.set_yticks(range(0, len(rows), step), [str(r) for r in rows[::step]])
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="score")
    return fig


def _dag_figure(space: SearchSpace, labels: dict[tuple[int, int], str], live: set[tuple[int, int]],
                title: str) -> Figure:
    """The cell DAG: nodes in a row, one arrow per edge (arcs above the row for edges that skip
    nodes), ``labels`` on the edges in ``live``; the other edges drawn faint."""
    graph = nx.DiGraph()
    graph.add_nodes_from(space.graph.nodes)
    nodes = sorted(graph.nodes)
    pos = {n: (float(i), 0.0) for i, n in enumerate(nodes)}
    longest = max((d - s for s, d in space.edges), default=1)
    fig = Figure(figsize=(1.2 + 1.5 * len(nodes), 1.2 + 0.55 * longest), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_axis_off()
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#dde8f5", edgecolors="#4a6fa5", node_size=450)
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=9)
    for s, d in space.edges:
        # Longer spans arc higher, so that no two edges (or their labels) lie on top of each other.
        style = f"arc3,rad={-0.25 - 0.1 * (d - s) if d - s > 1 else 0.0}"
        on = (s, d) in live
        nx.draw_networkx_edges(graph, pos, edgelist=[(s, d)], ax=ax, node_size=450, connectionstyle=style,
                               edge_color="#333333" if on else "#cccccc", style="solid" if on else "dotted",
                               width=1.5 if on else 1.0, arrows=True)
        if on:
            nx.draw_networkx_edge_labels(graph, pos, edge_labels={(s, d): labels[s, d]}, ax=ax, font_size=7,
                                         connectionstyle=style, bbox={"color": "white", "alpha": 0.8, "pad": 0.5})
    # An arc3 arc of rad r between points L apart peaks about r·L/2 above them.
    ax.set_ylim(-0.3, 0.5 * (0.25 + 0.1 * longest) * longest + 0.3)
    ax.set_xlim(-0.4, len(nodes) - 0.6)
    ax.set_title(title, fontsize=7)
    return fig


def cell_figure(space: SearchSpace, arch: Architecture) -> Figure:
    """The cell of ``arch``: each live edge labelled with its operation; dead and ``none`` edges faint."""
    live = {(s, d): op for s, d, op in space.active_edges(arch)}
    return _dag_figure(space, live, set(live), str(arch))


def space_figure(space: SearchSpace) -> Figure:
    """The cell DAG of ``space``: every edge labelled with its candidate operations."""
    labels = {(s, d): "\n".join(space.graph.edges[s, d]["ops"]) for s, d in space.edges}
    return _dag_figure(space, labels, set(labels), f"{space.name}: {space.size:,} architectures")


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
