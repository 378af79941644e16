"""Figures for TensorBoard and reports (matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

import functools
import io
import re
import textwrap
from collections.abc import Mapping

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wpl_nas.spaces import Architecture, SearchSpace

__all__ = ["ARTIFACT_DPI", "cell_figure", "cell_png", "forgetting_grid", "forgetting_heatmap", "png_bytes",
           "png_size", "space_figure"]


def forgetting_grid(matrix: Mapping[int, Mapping[int, float]], at_training: Mapping[int, float], *,
                    higher_is_better: bool = True) -> tuple[list[int], list[int], np.ndarray]:
    """The forgetting of each candidate at each re-score: rows (candidate trials), columns (the
    trials after which the pool was re-scored) and the grid, NaN where a candidate was not scored.

    Forgetting is the score at training minus the re-score (the re-score minus the score at
    training when lower is better), so it is positive when a candidate got worse."""
    rows = sorted(matrix)
    cols = sorted({j for scores in matrix.values() for j in scores})
    sign = 1.0 if higher_is_better else -1.0
    grid = np.full((len(rows), len(cols)), np.nan)  # (candidates, re-scores)
    # One pass over the scores that exist (a candidate is re-scored only while pooled, so they are
    # far fewer than the grid's cells), then one numpy assignment: no loop over every cell.
    column = {after: c for c, after in enumerate(cols)}
    scored = [(r, trial) for r, trial in enumerate(rows) if trial in at_training]
    count = sum(len(matrix[trial]) for _, trial in scored)
    at_r = np.fromiter((r for r, trial in scored for _ in matrix[trial]), dtype=np.intp, count=count)
    at_c = np.fromiter((column[j] for _, trial in scored for j in matrix[trial]), dtype=np.intp, count=count)
    score = np.fromiter((v for _, trial in scored for v in matrix[trial].values()), dtype=float, count=count)
    base = np.fromiter((at_training[trial] for _, trial in scored for _ in matrix[trial]), dtype=float, count=count)
    grid[at_r, at_c] = sign * (base - score)
    return rows, cols, grid


def forgetting_heatmap(matrix: Mapping[int, Mapping[int, float]], at_training: Mapping[int, float], *,
                       higher_is_better: bool = True, metric: str = "accuracy",
                       title: str = "forgetting") -> Figure:
    """The forgetting matrix as a heatmap: a row per candidate, a column per trial after which the
    pool was re-scored, the forgetting (:func:`forgetting_grid`) as colour on a diverging scale
    centred on zero: red where the candidate got worse than at its training, blue where it got
    better, white where it is as trained, hatched where it was not scored (before its training,
    after it left the pool); each value printed in its cell while they fit. The scale is symmetric
    (at least ±1% of the scores, so that re-scoring noise does not look saturated), so equal
    colours mean equal changes either way, and the colour bar says which way is forgetting.

    Args:
        matrix: ``{candidate trial: {after trial: score}}`` (:meth:`RetainedPool.matrix`).
        at_training: ``{candidate trial: score at training}``.
        higher_is_better: False for scores where lower is better (perplexity).
        metric: The score's name, for the colour bar's label.
        title: The figure's title.
    """
    rows, cols, grid = forgetting_grid(matrix, at_training, higher_is_better=higher_is_better)
    shown = grid if grid.size else np.full((1, 1), np.nan)
    finite = np.abs(shown[np.isfinite(shown)])
    scale = max((abs(v) for v in at_training.values()), default=1.0)
    limit = max(float(finite.max()) if finite.size else 0.0, 0.01 * scale, 1e-6)
    big = len(cols) > 14 or len(rows) > 24  # too many cells to print each value in
    fig = Figure(figsize=(min(3.2 + (0.25 if big else 0.5) * len(cols), 14.0),
                          min(1.8 + (0.22 if big else 0.32) * len(rows), 12.0)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-limit, vmax=limit)
    # Cells never scored are hatched, so that they do not read as white (no change).
    ax.patch.set(facecolor="white", edgecolor="#bbbbbb", hatch="///", linewidth=0.0)
    if not big:
        for (r, c), value in np.ndenumerate(grid):
            if np.isfinite(value):
                text = f"{value:+.2f}" if limit < 10 else f"{value:+.0f}"
                ax.text(c, r, "0" if text[1:].strip("0.") == "" else text, ha="center", va="center",
                        fontsize=7, color="white" if abs(value) > 0.6 * limit else "black")
    ax.set_xlabel("re-scored after trial")
    ax.set_ylabel("candidate (trial)")
    step = max(1, len(cols) // 12)
    ax.set_xticks(range(0, len(cols), step), [str(c) for c in cols[::step]])
    step = max(1, len(rows) // 16)
    ax.set_yticks(range(0, len(rows), step), [str(r) for r in rows[::step]])
    ax.set_title(title, fontsize=9)
    what = "score at training − re-score" if higher_is_better else "re-score − score at training"
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"forgetting = {what} ({metric})", fontsize=8)
    # Which way is which, at the ends of the bar.
    bar.ax.set_title("forgot\n(worse than\nat training)", fontsize=7, color="#b2182b")
    bar.ax.set_xlabel("improved\n(better than\nat training)", fontsize=7, color="#2166ac")
    return fig


_ASPECT = 0.8  # display height of a y unit over that of an x unit


def _rad(span: float) -> float:
    """Curvature of the arc of an edge that skips nodes: longer spans arc relatively higher
    (up to a cap, so that long graphs stay flat enough to read)."""
    return min(0.25 + 0.1 * span, 0.6)


def _wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken after the separators of
    architecture strings (``;`` and NAS-Bench-201's ``+``) rather than inside an op name."""
    lines = [""]
    for piece in re.split(r"(?<=[;+])\s*", text):
        if lines[-1] and len(lines[-1]) + len(piece) + 1 > width:
            lines.append("")
        lines[-1] += (" " if lines[-1] and lines[-1].endswith(";") else "") + piece
    return "\n".join(line for part in lines for line in (textwrap.wrap(part, width) or [""]))


def _dag_figure(graph: nx.DiGraph, title: str, *, fontsize: float = 7.0) -> Figure:
    """Draw a :meth:`SearchSpace.dag` graph: nodes at their ``pos``, one arrow per edge (arcs for
    edges between nodes of one row that skip nodes), ``label`` on live edges, the others faint;
    edge labels and the title in ``fontsize`` points, node labels a little larger."""
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
    short = all(len(graph.nodes[n]["label"]) < 4 for n in graph.nodes)
    node_size = 450 * (fontsize / 7.0) ** 2  # in points²: nodes grow with their labels
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#dde8f5", edgecolors="#4a6fa5", node_size=node_size)
    nx.draw_networkx_labels(graph, pos, labels={n: graph.nodes[n]["label"] for n in graph.nodes}, ax=ax,
                            font_size=fontsize * (9 / 7 if short else 6 / 7))
    for s, d, attrs in graph.edges(data=True):
        # Edges that skip nodes arc above the row, longer ones higher, so they do not overlap.
        style = f"arc3,rad={-_rad(span(s, d)) if span(s, d) > 1 else 0.0}"
        on = bool(attrs.get("live", True))
        nx.draw_networkx_edges(graph, pos, edgelist=[(s, d)], ax=ax, node_size=node_size, connectionstyle=style,
                               edge_color="#333333" if on else "#cccccc", style="solid" if on else "dotted",
                               width=1.5 if on else 1.0, arrows=True)
        if on and attrs.get("label"):
            nx.draw_networkx_edge_labels(graph, pos, edge_labels={(s, d): attrs["label"]}, ax=ax, font_size=fontsize,
                                         connectionstyle=style, bbox={"color": "white", "alpha": 0.8, "pad": 0.5})
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect(_ASPECT)
    # Long architecture strings wrap at their separators rather than run off the figure.
    per_line = max(40, int(16 * 7.0 / fontsize * (scale * (right - left) + 0.4)))
    ax.set_title(_wrap(title, per_line), fontsize=fontsize)
    return fig


#: Resolution of the cell images attached to trials (optuna-dashboard shows them at this size).
ARTIFACT_DPI = 150
#: Font size (points) of the cell figures: at ARTIFACT_DPI an edge label is about 20 pixels tall.
CELL_FONTSIZE = 10.0


def cell_figure(space: SearchSpace, arch: Architecture, *, fontsize: float = CELL_FONTSIZE) -> Figure:
    """The network of ``arch`` (for a cell space: its cell, each live edge labelled with its op)."""
    return _dag_figure(space.dag(arch), str(arch), fontsize=fontsize)


def cell_png(space: SearchSpace, arch: Architecture) -> bytes:
    """:func:`cell_figure` as the PNG attached to a trial: :data:`ARTIFACT_DPI`, so that its labels
    read at the size the image is shown (optuna-dashboard's trial note, or the image opened alone).

    The last few are kept: a search draws each candidate's cell for its artifact and again for
    TensorBoard, and rendering is most of the cost (about 0.1 s a cell)."""
    return _cell_png(space, str(arch))


@functools.lru_cache(maxsize=4)
def _cell_png(space: SearchSpace, arch: str) -> bytes:  # spaces are frozen and hashed by identity
    return png_bytes(cell_figure(space, Architecture.parse(arch)), dpi=ARTIFACT_DPI)


def png_size(png: bytes) -> tuple[int, int]:
    """The ``(width, height)`` in pixels of PNG ``png`` (its header's IHDR chunk)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def space_figure(space: SearchSpace) -> Figure:
    """The space's graph (for a cell space: the cell DAG, every edge labelled with its candidate ops)."""
    return _dag_figure(space.dag(), f"{space.name}: {space.size:,} architectures")


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
