"""Figures for TensorBoard and reports (matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["retention_heatmap"]


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
