"""Figures for TensorBoard and reports (matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

import io
import textwrap
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


_ASPECT = 0.8  # display height of a y unit over that of an x unit


def _rad(span: float) -> float:
    """Curvature of the arc of an edge that skips nodes: longer spans arc relatively higher
    (up to a cap, so that long graphs stay flat enough to read)."""
    return min(0.25 + 0.1 * span, 0.6)


def _dag_figure(graph: nx.DiGraph, title: str) -> Figure:
    """Draw a :meth:`SearchSpace.dag` graph: nodes at their ``pos``, one arrow per edge (arcs for
    edges between nodes of one row that skip nodes), ``label`` on live edges, the others faint."""
    pos = {n: graph.nodes[n]["pos"] for n in graph.nodes}
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]

    def span(s: object, d: object) -> float:  # how many nodes an edge within a row skips
        return abs(pos[d][0] - pos[s][0]) if pos[d][1] == pos[s][1] else 1.0

    longest = max((span(s, d) for s, d in graph.edges), default=1.0)
    # Arcs are drawn in display space, so the axes fix the display scale: an x unit is `scale`
    # inches and a y unit _ASPECT times that; an arc3 arc of rad r over L x units then peaks
    # r·L/2 / _ASPECT y units above its ends.
    top = max(ys) + 0.5 * _rad(longest) * longest / _ASPECT + 0.3
    bottom = min(ys) - 0.3
    left, right = min(xs) - 0.5, max(xs) + 0.5
    scale = min(1.5, 16.0 / (right - left))  # wide graphs shrink to 16 inches
    fig = Figure(figsize=(scale * (right - left) + 0.4, scale * _ASPECT * (top - bottom) + 0.5),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_axis_off()
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#dde8f5", edgecolors="#4a6fa5", node_size=450)
    nx.draw_networkx_labels(graph, pos, labels={n: graph.nodes[n]["label"] for n in graph.nodes}, ax=ax,
                            font_size=9 if all(len(graph.nodes[n]["label"]) < 4 for n in graph.nodes) else 6)
    for s, d, attrs in graph.edges(data=True):
        # Edges that skip nodes arc above the row, longer ones higher, so they do not overlap.
        style = f"arc3,rad={-_rad(span(s, d)) if span(s, d) > 1 else 0.0}"
        on = bool(attrs.get("live", True))
        nx.draw_networkx_edges(graph, pos, edgelist=[(s, d)], ax=ax, node_size=450, connectionstyle=style,
                               edge_color="#333333" if on else "#cccccc", style="solid" if on else "dotted",
                               width=1.5 if on else 1.0, arrows=True)
        if on and attrs.get("label"):
            nx.draw_networkx_edge_labels(graph, pos, edge_labels={(s, d): attrs["label"]}, ax=ax, font_size=7,
                                         connectionstyle=style, bbox={"color": "white", "alpha": 0.8, "pad": 0.5})
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect(_ASPECT)
    # Long architecture strings wrap at their separators rather than run off the figure.
    per_line = max(40, int(16 * (scale * (right - left) + 0.4)))
    ax.set_title("\n".join(textwrap.wrap(title.replace(";", "; "), per_line)), fontsize=7)
    return fig


def cell_figure(space: SearchSpace, arch: Architecture) -> Figure:
    """The network of ``arch`` (for a cell space: its cell, each live edge labelled with its op)."""
    return _dag_figure(space.dag(arch), str(arch))


def space_figure(space: SearchSpace) -> Figure:
    """The space's graph (for a cell space: the cell DAG, every edge labelled with its candidate ops)."""
    return _dag_figure(space.dag(), f"{space.name}: {space.size:,} architectures")


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
