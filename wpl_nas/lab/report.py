"""What a lab run writes: the results table (CSV, Markdown), per-run JSON, TensorBoard, the plot.

Run folder layout (``runs/<name>/``)::

    config.yaml                       the resolved configuration and the command line
    results.csv, results.md           one row per strategy (and variant): mean, and std over seeds
    seeds.csv                         the same measures for every seed
    retention.png                     the first model's retained accuracy while later models train
    retention/<strategy>[/<variant>]/seed<N>.json   retention matrix, curve and measures of one run
    tb/<strategy>[/<variant>]/seed<N>/             TensorBoard events of one run
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from wpl_nas.lab.metrics import METRICS, LabRow, SeedOutcome

__all__ = ["markdown_table", "outcome_path", "plot_retention", "write_outcome", "write_results", "write_seeds",
           "write_tensorboard"]


def outcome_path(outcome: SeedOutcome) -> Path:
    """``<strategy>[/<variant>]/seed<N>``: where one run's JSON and TensorBoard events go."""
    parts = [outcome.strategy, *([outcome.variant] if outcome.variant else []), f"seed{outcome.seed}"]
    return Path(*parts)


# --- tables ------------------------------------------------------------------------------------
def _headers(first: str, last: str, probed: str) -> dict[str, str]:
    return {"first_before": f"{first} before", "first_after": f"{first} after", "first_min": f"{probed} lowest",
            "forgetting_mean": "forgetting mean", "forgetting_max": "forgetting max", "rho": "ρ",
            "last_acc": f"{last} final", "ms_per_step": "ms / step", "strategy_bytes": "strategy memory"}


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(name: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    if name == "strategy_bytes":
        text, spread = _bytes(mean), _bytes(std) if not math.isnan(std) else ""
    elif name == "ms_per_step":
        text, spread = f"{mean:.2f}", f"{std:.2f}"
    elif name in ("forgetting_mean", "forgetting_max", "rho"):
        text, spread = f"{mean:+.3f}", f"{std:.3f}"
    else:
        text, spread = f"{mean:.3f}", f"{std:.3f}"
    return text if math.isnan(std) else f"{text} ± {spread}"


def markdown_table(rows: Sequence[LabRow], *, first: str, last: str, probed: str) -> str:
    """The results as a Markdown table (mean ± std over seeds when there are several)."""
    params = list(rows[0].params) if rows else []
    headers = _headers(first, last, probed)
    lines = ["| " + " | ".join(["strategy", *params, *(headers[m] for m in METRICS)]) + " |",
             "|" + "---|" * (1 + len(params)) + "---:|" * len(METRICS)]
    for row in rows:
        cells = [row.strategy, *(f"{row.params[p]:g}" if isinstance(row.params[p], float) else str(row.params[p])
                                 for p in params),
                 *(_cell(m, row.mean[m], row.std[m]) for m in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def write_results(run_dir: Path, rows: Sequence[LabRow], *, scenario: str, first: str, last: str, probed: str,
                  title: str) -> str:
    """Write ``results.csv`` and ``results.md``; return the Markdown table."""
    params = list(rows[0].params) if rows else []
    with open(run_dir / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scenario", "strategy", *params, "seeds", *(c for m in METRICS for c in (m, f"{m}_std"))])
        for row in rows:
            writer.writerow([scenario, row.strategy, *(row.params[p] for p in params), row.seeds,
                             *(c for m in METRICS for c in (_number(row.mean[m]), _number(row.std[m])))])
    table = markdown_table(rows, first=first, last=last, probed=probed)
    legend = (
        f"*{first} before / after*: accuracy right after its own training and at the end (mean over the earlier "
        f"models); *{probed} lowest*: its lowest accuracy while the later models trained; *forgetting*: before "
        f"− after, mean and max over the earlier models; *ρ*: mean of (after − chance) / (before − chance) − 1 "
        f"(HAT's ratio: 0 nothing forgotten, −1 back to chance); *{last} final*: the last model's accuracy; "
        "*ms / step*: training time per step (probes excluded); *strategy memory*: bytes of the tensors in the "
        "strategy's state. Mean ± sample std over seeds when there are several.")
    (run_dir / "results.md").write_text(f"# {title}\n\n{table}\n\n{legend}\n")
    return table


def write_seeds(run_dir: Path, outcomes: Sequence[SeedOutcome], *, scenario: str) -> None:
    """Write ``seeds.csv``: every measure of every (strategy, variant, seed)."""
    params = list(outcomes[0].params) if outcomes else []
    with open(run_dir / "seeds.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scenario", "strategy", *params, "seed", *METRICS])
        for o in outcomes:
            metrics = o.metrics
            writer.writerow([scenario, o.strategy, *(o.params[p] for p in params), o.seed,
                             *(_number(metrics[m]) for m in METRICS)])


def write_outcome(run_dir: Path, outcome: SeedOutcome) -> Path:
    """Write one run's retention matrix, curve and measures as JSON; return the file."""
    path = run_dir / "retention" / outcome_path(outcome).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(outcome.to_dict()), indent=1, allow_nan=False))
    return path


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: null instead (e.g. the ratio of a model that never beat chance)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- TensorBoard -----------------------------------------------------------------------------------
def write_tensorboard(run_dir: Path, outcome: SeedOutcome) -> None:
    """One TensorBoard run per (strategy, variant, seed).

    Tags: ``retained/first_acc`` (step: training steps since the first model finished),
    ``accuracy/model_NN`` and ``accuracy/mean_trained`` (step: index of the model just trained),
    and ``final/<measure>`` for every entry of :data:`~wpl_nas.lab.metrics.METRICS` (step 0).
    """
    writer = SummaryWriter(log_dir=str(run_dir / "tb" / outcome_path(outcome)))
    try:
        for step, acc in zip(outcome.curve_steps, outcome.curve_acc, strict=True):
            writer.add_scalar("retained/first_acc", acc, step)
        for j, row in enumerate(outcome.matrix):
            for k, acc in enumerate(row):
                writer.add_scalar(f"accuracy/model_{k:02d}", acc, j)
            writer.add_scalar("accuracy/mean_trained", sum(row) / len(row), j)
        for name, value in outcome.metrics.items():
            if not math.isnan(value):
                writer.add_scalar(f"final/{name}", value, 0)
        writer.add_text("models", "\n\n".join(f"{lab}: `{arch}`" for lab, arch in
                                              zip(outcome.labels, outcome.archs, strict=True)), 0)
    finally:
        writer.close()


# --- the plot --------------------------------------------------------------------------------------
def _band(outcomes: Sequence[SeedOutcome], xs_of: str, ys_of: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of one curve, on the first seed's x grid (seeds share it)."""
    xs = np.asarray(getattr(outcomes[0], xs_of), dtype=float)
    ys = np.stack([np.interp(xs, np.asarray(getattr(o, xs_of), dtype=float), np.asarray(getattr(o, ys_of)))
                   for o in outcomes])
    return xs, ys.mean(0), (ys.std(0, ddof=1) if len(outcomes) > 1 else np.zeros_like(xs))


def plot_retention(path: Path, outcomes: Sequence[SeedOutcome], *, probed: str, title: str) -> None:
    """``retention.png``: per variant, the first model's accuracy while the later ones train, one line
    per strategy (mean over seeds, ± std band); with more than two models, a second row shows the
    mean accuracy of every model trained so far after each model."""
    variants = list(dict.fromkeys(o.variant for o in outcomes))
    strategies = list(dict.fromkeys(o.strategy for o in outcomes))
    matrix_row = any(len(o.matrix) > 2 for o in outcomes)
    rows = 2 if matrix_row else 1
    fig = Figure(figsize=(4.2 * len(variants), 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(variants), squeeze=False)
    for col, variant in enumerate(variants):
        ax = axes[0][col]
        chance = None
        for strategy in strategies:
            group = [o for o in outcomes if o.variant == variant and o.strategy == strategy]
            if not group:
                continue
            chance = group[0].chance[0]
            xs, mean, std = _band(group, "curve_steps", "curve_acc")
            (line,) = ax.plot(xs, mean, label=strategy)
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            if matrix_row:
                ax2 = axes[1][col]
                means = np.stack([[sum(r) / len(r) for r in o.matrix] for o in group])
                ax2.plot(np.arange(1, means.shape[1] + 1), means.mean(0), marker="o", label=strategy,
                         color=line.get_color())
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
        params = next(o.params for o in outcomes if o.variant == variant)
        ax.set_title(", ".join([title, *(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in params.items())]), fontsize=9)
        ax.set_xlabel("training steps after the first model")
        ax.set_ylabel(f"{probed} accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        if matrix_row:
            ax2 = axes[1][col]
            ax2.set_xlabel("models trained")
            ax2.set_ylabel("mean accuracy of the models trained")
            ax2.set_ylim(0, 1)
            ax2.legend(fontsize=7)
    fig.savefig(path, dpi=110)
