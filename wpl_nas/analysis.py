"""Reading a run folder after (or during) a search: ``wpl-nas anatomy``.

::

    from wpl_nas.analysis import anatomy_run
    result = anatomy_run("runs/mnist1d-wpl")
    print(result.table)   # per stage: CKA now, and how much accuracy resetting that stage brings back

Works on a finished run and on one still in progress (it reads the last checkpoint and the
snapshots the search's :class:`~wpl_nas.callbacks.AnatomyCallback` keeps for the pool members).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wpl_nas.api import load_run
from wpl_nas.callbacks import ANATOMY_DIR
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation.anatomy import linear_cka, reset_stage, stage_features, stage_names
from wpl_nas.objective import SupernetObjective
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import load_checkpoint, write_text_atomically

__all__ = ["AnatomyResult", "anatomy_run"]

#: A member must have lost at least this much accuracy to count in the "share recovered".
MIN_LOSS = 0.005


@dataclass
class AnatomyResult:
    """What :func:`anatomy_run` returns.

    Attributes:
        members: One per pool member with a snapshot: ``trial``, ``arch``, ``at_training``, ``now``,
            ``cka`` (``{stage: CKA}``) and ``reset`` (``{stage: accuracy with that stage reset}``, plus
            ``all``: every stage reset).
        stages: ``{stage: {"cka", "recovered_points", "recovered_share"}}``, means over the members.
        table: The per-stage table as Markdown.
        plot: The PNG written next to ``anatomy.md``.
    """

    members: list[dict[str, Any]]
    stages: dict[str, dict[str, float]]
    table: str
    plot: Path


def _summarise(members: list[dict[str, Any]], stages: list[str]) -> dict[str, dict[str, float]]:
    lost = [m for m in members if m["at_training"] - m["now"] >= MIN_LOSS]
    out = {}
    for stage in [*stages, "all"]:
        ckas = [m["cka"][stage] for m in members if stage in m["cka"] and not math.isnan(m["cka"][stage])]
        loss = sum(m["at_training"] - m["now"] for m in lost)
        out[stage] = {
            "cka": sum(ckas) / len(ckas) if ckas else math.nan,
            "recovered_points": 100.0 * sum(m["reset"][stage] - m["now"] for m in members) / len(members),
            "recovered_share": sum(m["reset"][stage] - m["now"] for m in lost) / loss if loss > 0 else math.nan,
        }
    return out


def _markdown(stages: dict[str, dict[str, float]], members: int, lost: int) -> str:
    lines = ["| stage | CKA now | accuracy back by resetting it (points) | share of the loss recovered |",
             "|---|---:|---:|---:|"]
    for stage, m in stages.items():
        cka = "—" if math.isnan(m["cka"]) else f"{m['cka']:.3f}"
        share = "n/a" if math.isnan(m["recovered_share"]) else f"{100 * m['recovered_share']:.0f}%"
        lines.append(f"| {stage} | {cka} | {m['recovered_points']:+.2f} | {share} |")
    lines.append(f"\nMeans over {members} pool member(s); the share counts the {lost} that lost at least "
                 f"{100 * MIN_LOSS:g} points since their training. CKA 1: the stage computes what it did right "
                 "after the member trained; `all` resets every stage (it must bring back the score at training).")
    return "\n".join(lines)


def _plot(path: Path, stages: dict[str, dict[str, float]], history: dict[str, dict[str, dict[str, float]]],
          names: list[str]) -> None:
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.bar(names, [stages[s]["cka"] for s in names])
    ax1.set_ylim(0, 1.05)
    ax1.set_title("CKA now, per stage", fontsize=9)
    ax2.bar(names, [stages[s]["recovered_points"] for s in names])
    ax2.set_title("accuracy back by resetting (points)", fontsize=9)
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
                          "has finished yet, or the run was made by a wpl-nas without them; run a new search")
    objective = SupernetObjective(run.config, run_dir=run.run_dir)  # the supernet's latest weights
    net, trainer = objective.supernet, objective.trainer
    names = stage_names(net)
    probe = trainer.eval_x[:256]
    bs = batch_size or run.config.eval_batch_size
    members: list[dict[str, Any]] = []
    for path in snapshots:
        snap = load_checkpoint(path, map_location=objective.device)
        arch = Architecture.parse(snap["arch"])
        trial = int(path.stem.split("_")[1])
        features = stage_features(net, arch, probe[: len(next(iter(snap["features"].values())))])
        reset = {stage: reset_stage(net, arch, snap["weights"], stage, trainer.eval_x, trainer.eval_y, batch_size=bs)
                 for stage in names}
        reset["all"] = reset_stage(net, arch, snap["weights"], None, trainer.eval_x, trainer.eval_y, batch_size=bs)
        entry = objective.pool.entries.get(trial)
        members.append({"trial": trial, "arch": str(arch),
                        "at_training": entry.score if entry is not None else math.nan,
                        "now": objective.score(arch),
                        "cka": {s: linear_cka(snap["features"][s], features[s]) for s in names}, "reset": reset})
    stages = _summarise(members, names)
    lost = sum(m["at_training"] - m["now"] >= MIN_LOSS for m in members)
    table = _markdown(stages, len(members), lost)
    history_path = run.run_dir / "anatomy.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}
    plot = run.run_dir / "anatomy.png"
    _plot(plot, stages, history, names)
    rows = ["| member | architecture | at training | now | all stages reset |", "|---:|---|---:|---:|---:|",
            *(f"| {m['trial']} | `{m['arch']}` | {m['at_training']:.4f} | {m['now']:.4f} | {m['reset']['all']:.4f} |"
              for m in members)]
    write_text_atomically(run.run_dir / "anatomy.md", f"# Anatomy of forgetting: {run.run_dir}\n\n{table}\n\n"
                          + "\n".join(rows) + "\n\n![per stage](anatomy.png)\n")
    return AnatomyResult(members, stages, table, plot)
