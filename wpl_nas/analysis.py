"""Reading a run folder after (or during) a search: ``wpl-nas anatomy`` and ``wpl-nas report``.

::

    from wpl_nas.analysis import anatomy_run
    result = anatomy_run("runs/mnist1d-wpl")
    print(result.table)   # per stage: CKA now, and how much accuracy resetting that stage brings back

Works on a finished run and on one still in progress (it reads the last checkpoint and the
snapshots the search's :class:`~wpl_nas.callbacks.AnatomyCallback` keeps for the pool members).
"""

from __future__ import annotations

import base64
import csv
import html as html_lib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wpl_nas.callbacks import SNAPSHOT_KEYS
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation.anatomy import linear_cka, reset_stage, stage_features, stage_names
from wpl_nas.evaluation.retention import matrix_from_csv
from wpl_nas.evaluation.scoring import Metric
from wpl_nas.run_folder import (
    ANATOMY_DIR,
    ANATOMY_MD,
    ANATOMY_PNG,
    CONFIG_FILE,
    RANK_DIR,
    RANKING_CSV,
    RANKING_MD,
    REPORT_DIR,
    RETENTION_CSV,
    RETENTION_JSON,
    load_run,
    read_anatomy,
)
from wpl_nas.selection import best_at_training
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import load_checkpoint, read_json, write_text_atomically
from wpl_nas.tracking.figures import forgetting_heatmap
from wpl_nas.tracking.markdown import code_cell

__all__ = ["AnatomyResult", "ReportResult", "anatomy_run", "report_run"]



@dataclass(frozen=True)
class _Units:
    """How the anatomy reports a metric's changes: ``scale`` × the change, in ``unit``; a member
    must have lost at least ``min_loss`` (in the metric's own units) to count in the share recovered."""

    scale: float
    unit: str
    min_loss: float


_UNITS = {"accuracy": _Units(100.0, "accuracy points", 0.005),
          "perplexity": _Units(1.0, "perplexity drop", 0.05)}


@dataclass
class AnatomyResult:
    """What :func:`anatomy_run` returns.

    Attributes:
        members: One per pool member with a snapshot: ``trial``, ``arch``, ``at_training``, ``now``,
            ``cka`` (``{stage: CKA}``) and ``reset`` (``{stage: score with that stage reset}``, plus
            ``all``: every stage reset).
        stages: ``{stage: {"cka", "recovered_points", "recovered_share"}}``, means over the members;
            ``recovered_points`` is in accuracy points, or in perplexity for language data
            (positive when resetting the stage helps).
        table: The per-stage table as Markdown.
        plot: The PNG written next to ``anatomy.md``.
    """

    members: list[dict[str, Any]]
    stages: dict[str, dict[str, float]]
    table: str
    plot: Path


def _summarise(members: list[dict[str, Any]], stages: list[str], metric: Metric) -> dict[str, dict[str, float]]:
    """Per stage: mean CKA, the mean score brought back by resetting it (in the metric's
    reporting units, positive when the reset helps) and the share of the loss it recovers."""
    q, units = metric.quality, _UNITS[metric.name]

    def gain(m: dict[str, Any], key: str) -> float:  # how much better `key` is than now
        return q(m["reset"][key] if key != "at_training" else m["at_training"]) - q(m["now"])

    lost = [m for m in members if gain(m, "at_training") >= units.min_loss]
    out = {}
    for stage in [*stages, "all"]:
        ckas = [m["cka"][stage] for m in members if stage in m["cka"] and not math.isnan(m["cka"][stage])]
        loss = sum(gain(m, "at_training") for m in lost)
        out[stage] = {
            "cka": sum(ckas) / len(ckas) if ckas else math.nan,
            "recovered_points": units.scale * sum(gain(m, stage) for m in members) / len(members),
            "recovered_share": sum(gain(m, stage) for m in lost) / loss if loss > 0 else math.nan,
        }
    return out


def _markdown(stages: dict[str, dict[str, float]], members: int, lost: int, metric: Metric) -> str:
    units = _UNITS[metric.name]
    lines = [f"| stage | CKA now | score back by resetting it ({units.unit}) | share of the loss recovered |",
             "|---|---:|---:|---:|"]
    for stage, m in stages.items():
        cka = "—" if math.isnan(m["cka"]) else f"{m['cka']:.3f}"
        share = "n/a" if math.isnan(m["recovered_share"]) else f"{100 * m['recovered_share']:.0f}%"
        lines.append(f"| {stage} | {cka} | {m['recovered_points']:+.2f} | {share} |")
    lines.append(f"\nMeans over {members} pool member(s); the share counts the {lost} that lost at least "
                 f"{units.scale * units.min_loss:g} ({units.unit}) since their training. CKA 1: the stage computes "
                 "what it did right after the member trained; `all` resets every stage (it must bring back the "
                 "score at training).")
    return "\n".join(lines)


def _plot(path: Path, stages: dict[str, dict[str, float]], history: dict[str, dict[str, dict[str, float]]],
          names: list[str], metric: Metric) -> None:
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.bar(names, [stages[s]["cka"] for s in names])
    ax1.set_ylim(0, 1.05)
    ax1.set_title("CKA now, per stage", fontsize=9)
    ax2.bar(names, [stages[s]["recovered_points"] for s in names])
    ax2.set_title(f"score back by resetting ({_UNITS[metric.name].unit})", fontsize=9)
    for member, rows in sorted(history.items(), key=lambda kv: int(kv[0])):
        after = sorted(rows, key=int)
        for stage in names:
            ax3.plot([int(a) for a in after], [rows[a][stage] for a in after], alpha=0.6,
                     color=f"C{names.index(stage)}", label=stage if member == min(history, key=int) else None)
    ax3.set_title("CKA of each member over the search", fontsize=9)
    ax3.set_xlabel("after trial")
    ax3.set_ylim(0, 1.05)
    if history:
        ax3.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.savefig(path, dpi=110)


def anatomy_run(run_dir: str | Path, *, batch_size: int | None = None) -> AnatomyResult:
    """Per-stage CKA and layer-reset probe of a run's pool members (see :mod:`wpl_nas.evaluation.anatomy`).

    Writes ``RUN_DIR/anatomy.md`` and ``RUN_DIR/anatomy.png``.

    Raises:
        ConfigError: not a run folder, or a run without anatomy snapshots (searched before they
            existed, or no candidate finished yet).
    """
    run = load_run(run_dir)
    snapshots = sorted((run.run_dir / ANATOMY_DIR).glob("trial_*.pt"))
    if not snapshots:
        raise ConfigError(f"run {run.run_dir} has no anatomy snapshots ({ANATOMY_DIR}/trial_NNNN.pt): no candidate "
                          "has finished yet, or the search ran without the anatomy callback (your own study: pass "
                          "objective.anatomy_callback() to study.optimize), or by a wpl-nas without it")
    # The supernet's latest weights, on this process's threads (not the run's: wpl_nas.threads).
    trained = run.folder.load_supernet()
    net = trained.supernet
    names = stage_names(net)
    probe = trained.eval_x[:256]
    bs = batch_size or run.config.eval_batch_size
    members: list[dict[str, Any]] = []
    for path in snapshots:
        try:
            snap = load_checkpoint(path, map_location=trained.device, required=SNAPSHOT_KEYS,
                                   what="anatomy snapshot")
        except ConfigError:
            if not path.exists():  # a running search replaced or dropped it since the listing
                continue
            raise
        arch = Architecture.parse(snap["arch"])
        trial = int(path.stem.split("_")[1])
        features = stage_features(net, arch, probe[: len(next(iter(snap["features"].values())))])
        reset = {stage: reset_stage(net, arch, snap["weights"], stage, trained.eval_x, trained.eval_y, batch_size=bs,
                                    score=trained.metric.compute) for stage in [*names, None]}
        reset["all"] = reset.pop(None)
        entry = trained.pool.entries.get(trial)
        members.append({"trial": trial, "arch": str(arch),
                        "at_training": entry.score if entry is not None else math.nan,
                        "now": trained.score(arch),
                        "cka": {s: linear_cka(snap["features"][s], features[s]) for s in names}, "reset": reset})
    metric = trained.metric
    stages = _summarise(members, names, metric)
    lost = sum(metric.quality(m["at_training"]) - metric.quality(m["now"]) >= _UNITS[metric.name].min_loss
               for m in members)
    table = _markdown(stages, len(members), lost, metric)
    history = read_anatomy(run.run_dir)
    plot = run.run_dir / ANATOMY_PNG
    _plot(plot, stages, history, names, metric)
    rows = ["| member | architecture | at training | now | all stages reset |", "|---:|---|---:|---:|---:|",
            *(f"| {m['trial']} | {code_cell(m['arch'])} | {m['at_training']:.4f} | {m['now']:.4f} "
              f"| {m['reset']['all']:.4f} |" for m in members)]
    write_text_atomically(run.run_dir / ANATOMY_MD, f"# Anatomy of forgetting: {run.run_dir}\n\n{table}\n\n"
                          + "\n".join(rows) + "\n\n![per stage](anatomy.png)\n")
    return AnatomyResult(members, stages, table, plot)


# --- wpl-nas report ------------------------------------------------------------------------------
@dataclass
class ReportResult:
    """What :func:`report_run` returns: the report file and the figures beside it."""

    path: Path
    figures: list[Path]


def _retention_figure(path: Path, pool: dict[str, Any]) -> None:
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    candidates = pool["candidates"]
    for c in candidates:
        rows = sorted((int(j), v) for j, v in c["rescores"].items())
        if len(rows) > 1:
            ax1.plot([j for j, _ in rows], [v for _, v in rows], alpha=0.5, linewidth=1)
    ax1.set_xlabel("after trial")
    ax1.set_ylabel("score")
    ax1.set_title("retained score of each pooled candidate", fontsize=9)
    trials = [c["trial"] for c in candidates]
    ax2.bar(trials, [c["forgetting"] for c in candidates],
            color=["C3" if c["forgetting"] > 0 else "C2" for c in candidates])
    ax2.axhline(0, color="grey", linewidth=0.8)
    ax2.set_xlabel("candidate (trial)")
    ax2.set_ylabel("score at training − latest")
    ax2.set_title("forgetting per candidate", fontsize=9)
    fig.savefig(path, dpi=110)


def _forgetting_figure(path: Path, pool: dict[str, Any], *, higher_is_better: bool, metric: str) -> None:
    """The forgetting matrix of a ``retention.json``'s candidates, as in TensorBoard's ``forgetting/matrix``."""
    candidates = pool["candidates"]
    matrix = {c["trial"]: {int(j): v for j, v in c["rescores"].items()} for c in candidates}
    at_training = {c["trial"]: c["score_at_training"] for c in candidates}
    fig = forgetting_heatmap(matrix, at_training, higher_is_better=higher_is_better, metric=metric,
                             title=f"forgetting of each candidate, as after trial {pool['after_trial']}")
    fig.savefig(path, dpi=110)


def _ranking_figure(path: Path, rows: list[dict[str, str]]) -> None:
    fig = Figure(figsize=(4.2, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    truth = [float(r["ground_truth"]) for r in rows]
    ax.scatter(truth, [float(r["at_training"]) for r in rows], label="at training", s=18)
    ax.scatter(truth, [float(r["final"]) for r in rows], label="final supernet", s=18, marker="x")
    ax.set_xlabel("ground truth")
    ax.set_ylabel("supernet score")
    ax.set_title("ranking fidelity", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def report_run(run_dir: str | Path, *, html: bool = False) -> ReportResult:
    """Write ``RUN_DIR/report/report.md`` (or a self-contained ``report.html``) with PNG figures.

    Contents: the search's summary (best architecture, pool measures), retained scores over the
    search, forgetting per candidate and the forgetting matrix (a heatmap on a scale centred on
    zero, as TensorBoard's ``forgetting/matrix``), the ranking against the ground truth when ``wpl-nas rank``
    has run, the anatomy table when ``wpl-nas anatomy`` has run, and the run's configuration.
    Works on a run still in progress (it reads what the last trial wrote).

    Raises:
        ConfigError: not a run folder, or a run from before ``retention.json`` existed.
    """
    run = load_run(run_dir)
    retention_path = run.run_dir / RETENTION_JSON
    if not retention_path.is_file():
        raise ConfigError(f"run {run.run_dir} has no retention.json: no trial has finished yet, or the run was made "
                          "by a wpl-nas that did not write it; run a new search")
    pool = _with_rows(read_json(retention_path, what="retention record"), run.run_dir)
    out = run.run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    figures = [out / "retention.png", out / "forgetting.png"]
    _retention_figure(figures[0], pool)
    # The direction: recorded by newer runs; the study's first direction says it for older ones.
    higher_is_better = pool.get("higher_is_better", run.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    metric = "accuracy" if higher_is_better else "perplexity"
    _forgetting_figure(figures[1], pool, higher_is_better=higher_is_better, metric=metric)
    complete = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = best_at_training(run.study)  # the study's direction: perplexity is minimised
    summary = pool["summary"]
    every = run.config.rescore_every
    measures = "\n".join(f"| {k} | {v:+.4f} |" for k, v in summary.items() if v is not None and v == v)
    parts = [f"# wpl-nas report: {run.study.study_name}", "",
             f"{len(run.study.trials)} trials ({len(complete)} complete) of space `{run.config.space}` on "
             f"`{run.config.dataset}` with strategy `{run.config.strategy}`, sampler `{run.config.sampler}`; "
             f"the pool as after trial {pool['after_trial']}.", ""]
    if best is not None:
        parts += [f"**Best architecture**: `{best.user_attrs['arch']}`, score {best.values[0]:.4f} at training, "
                  f"{_pool_latest(pool, best.number)} now.", ""]
    parts += ["## Retention", "", "| measure | value |", "|---|---:|", measures, "",
              "The `earlier_*` measures and `forgetting_this_trial` count only the members that were already in the "
              "pool before the last trial: a candidate joining (or leaving) does not move them." if every == 1 else
              f"The pool was re-scored every {every} trials (and after the last): the `earlier_*` measures and "
              "`forgetting_this_trial` count only the members that were already in the pool at the re-score before "
              "the last one, and `forgetting_this_trial` is their drop since then; a candidate joining (or leaving) "
              "does not move them.", "",
              "![retention](retention.png)", "",
              "Forgetting of each candidate (row) after each later trial (column): score at training minus re-score, "
              "red where the candidate got worse than at its training, blue where it got better; hatched where it "
              "was not scored (before its training, or after it left the pool).", "",
              "![forgetting](forgetting.png)", ""]
    ranking = run.run_dir / RANK_DIR / RANKING_CSV
    if ranking.is_file():
        with ranking.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        figures.append(out / "ranking.png")
        _ranking_figure(figures[-1], rows)
        table = (run.run_dir / RANK_DIR / RANKING_MD).read_text().split("\n\n", 1)[1].split("\n\n")[0]
        parts += ["## Ranking fidelity", "", table, "", "![ranking](ranking.png)", ""]
    anatomy = run.run_dir / ANATOMY_MD
    if anatomy.is_file():
        table = anatomy.read_text().split("\n\n", 1)[1].split("\n\n")[0]
        parts += ["## Anatomy of forgetting", "", table, ""]
    parts += ["## Configuration", "", "```yaml", (run.run_dir / CONFIG_FILE).read_text().rstrip(), "```", ""]
    text = "\n".join(parts)
    if not html:
        path = out / "report.md"
        write_text_atomically(path, text)
        return ReportResult(path, figures)
    path = out / "report.html"
    write_text_atomically(path, _html(text, out))
    return ReportResult(path, figures)


def _with_rows(pool: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A ``retention.json`` record with every candidate ever pooled and its row (``rescores``): as
    written by runs that kept them there, or rebuilt from ``retention.csv`` (newer runs keep the rows
    there only, so that ``retention.json`` does not grow with the search)."""
    if all("rescores" in c for c in pool["candidates"]):
        return pool
    try:
        matrix, at_training = matrix_from_csv((run_dir / RETENTION_CSV).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"run {run_dir}: cannot read its {RETENTION_CSV} ({exc}); it holds the retention matrix "
                          f"the report draws") from None
    sign = 1.0 if pool.get("higher_is_better", True) else -1.0
    candidates = []
    for trial, row in matrix.items():
        latest = row[max(row)]
        candidates.append({"trial": trial, "score_at_training": at_training[trial], "latest": latest,
                           "forgetting": sign * (at_training[trial] - latest),
                           "rescores": {str(j): v for j, v in row.items()}})
    return {**pool, "candidates": candidates}


def _pool_latest(pool: dict[str, Any], trial: int) -> str:
    """The latest re-score of ``trial`` in a ``retention.json``'s pool, formatted, or "not pooled"."""
    for c in pool["candidates"]:
        if c["trial"] == trial:
            return f"{c['latest']:.4f}"
    return "not pooled"


def _html(markdown: str, folder: Path) -> str:
    """A minimal self-contained HTML rendering of the report's Markdown (tables, headings, code, images
    inlined as base64), so the one file can be mailed or attached."""
    out, table, code = ["<!doctype html><meta charset='utf-8'><title>wpl-nas report</title>",
                        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
                        "collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style>"], [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            out.append("</pre>" if code else "<pre>")
            code = not code
            continue
        if code:
            out.append(html_lib.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                table.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1: line.index(")")]
            data = base64.b64encode((folder / name).read_bytes()).decode()
            out.append(f"<img alt='{name}' src='data:image/png;base64,{data}'>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
    if table:
        out.append("<table>" + "".join(table) + "</table>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold**."""
    text = html_lib.escape(text)
    parts = text.split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
