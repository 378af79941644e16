"""Ranking fidelity: does the supernet rank its candidates as they rank on their own? (``wpl-nas rank``)

::

    from wpl_nas.fidelity import rank_run
    result = rank_run("runs/mnist1d-wpl", ground_truth="standalone", archs=30)
    print(result.table)

Up to ``archs`` distinct architectures of the run's complete trials are chosen, evenly spread
over the search's ranking (so both ends of the range are in). Each gets two supernet scores:
its score at training (what the search used) and its score with the supernet's final weights
(after every later candidate trained: what the supernet believes now). The ground truth is either

* ``standalone``: each architecture trained from scratch on its own (a fresh network, the run's
  data, optimiser settings and seed, ``epochs`` epochs [default: the run's]) and scored on the
  same validation subset; results are cached in ``RUN_DIR/rank/standalone.json`` after each
  architecture, so an interrupted ranking resumes where it stopped; or
* a CSV table keyed by architecture string (e.g. NAS-Bench-201 / NATS-Bench's topology table,
  whose ``ArchitectureString`` column holds strings in the format this library prints).

Reported: Kendall's τ, Spearman's ρ and the top-k overlap between each supernet score and the
ground truth, in ``RUN_DIR/rank/ranking.md`` and ``ranking.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from wpl_nas.api import load_run
from wpl_nas.config import SearchConfig
from wpl_nas.data import DataBundle
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import kendall_tau, spearman_rho, top_k_overlap
from wpl_nas.objective import SupernetObjective, build_supernet
from wpl_nas.spaces import Architecture
from wpl_nas.strategies import create_strategy
from wpl_nas.tracking import read_json, write_text_atomically
from wpl_nas.tracking.markdown import code_cell
from wpl_nas.training import CandidateTrainer

__all__ = ["RankResult", "rank_run", "train_standalone"]

RANK_DIR = "rank"
RANKING_MD = "ranking.md"
RANKING_CSV = "ranking.csv"
#: Supernet scores compared with the ground truth: column name -> what it is.
SUPERNET_SCORES = {"at_training": "score at training", "final": "final supernet"}


@dataclass
class RankResult:
    """What :func:`rank_run` returns.

    Attributes:
        rows: One per architecture: ``trial``, ``arch``, ``at_training``, ``final``, ``ground_truth``.
        measures: ``{supernet score: {"kendall_tau", "spearman_rho", "top_k"}}``.
        top_k: The k of the top-k overlap.
        table: The report as Markdown.
        out_dir: Where ``ranking.md`` and ``ranking.csv`` were written.
    """

    rows: list[dict[str, Any]]
    measures: dict[str, dict[str, float]]
    top_k: int
    table: str
    out_dir: Path


def train_standalone(config: SearchConfig, data: DataBundle, arch: Architecture, *, epochs: int,
                     device: torch.device | str = "cpu") -> float:
    """``arch`` trained from scratch on its own (fresh weights seeded by ``config.seed``, plain SGD
    with the run's settings), scored on ``config``'s fixed validation subset."""
    net = build_supernet(config.space, data, seed=config.seed).standalone(arch).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    train, val = data.train, data.val
    if not (isinstance(val, TensorDataset) and isinstance(train, TensorDataset)):
        raise TypeError(f"dataset {config.dataset!r} must load as TensorDatasets (see wpl_nas.data)")
    n_eval = config.eval_samples or len(val)
    eval_set = (val.tensors[0][:n_eval].to(device), val.tensors[1][:n_eval].to(device))
    trainer = CandidateTrainer(net, create_strategy("naive", net), train_set=train, held_out=val, eval_set=eval_set,
                               optimizer=optimizer, batch_size=config.batch_size, epochs=epochs,
                               grad_clip=config.grad_clip, eval_batch_size=config.eval_batch_size, seed=config.seed,
                               metric=data.metric)
    return trainer.train(arch, trial_index=0).score


def _choose(study: optuna.Study, count: int,
            quality: Callable[[float], float]) -> list[tuple[int, Architecture, float]]:
    """Up to ``count`` distinct architectures of complete trials, evenly spread over their ranking
    (best first by ``quality`` of the score, which is higher for better scores)."""
    latest: dict[str, tuple[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        # A repeated architecture: its last trial.
        latest[t.user_attrs["arch"]] = (t.number, float(t.user_attrs["score_at_training"]))
    ranked = sorted(latest.items(), key=lambda kv: (-quality(kv[1][1]), kv[1][0]))
    if len(ranked) > count:
        picks = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
        ranked = [ranked[i] for i in picks]
    return [(trial, Architecture.parse(arch), score) for arch, (trial, score) in ranked]


def _read_table(path: Path, *, key: str, column: str) -> dict[str, float]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            for name in (key, column):
                if name not in fields:
                    raise ConfigError(f"ground-truth table {path} has no column {name!r}; its columns: "
                                      f"{', '.join(fields) or 'none'}")
            table = {}
            for line, row in enumerate(reader, start=2):
                try:
                    table[row[key].strip()] = float(row[column])
                except ValueError:
                    raise ConfigError(f"{path}, line {line}: {column}={row[column]!r} is not a number") from None
            return table
    except OSError as exc:
        raise ConfigError(f"cannot read ground-truth table {path}: {exc.strerror}") from None


def _measures(rows: Sequence[dict[str, Any]], top_k: int,
              quality: Callable[[float], float]) -> dict[str, dict[str, float]]:
    truth = [quality(r["ground_truth"]) for r in rows]  # rank correlations do not mind the sign; top-k does
    return {name: {"kendall_tau": kendall_tau([quality(r[name]) for r in rows], truth),
                   "spearman_rho": spearman_rho([quality(r[name]) for r in rows], truth),
                   "top_k": top_k_overlap([quality(r[name]) for r in rows], truth, top_k) if rows else math.nan}
            for name in SUPERNET_SCORES}


def _markdown(rows: Sequence[dict[str, Any]], measures: dict[str, dict[str, float]], *, top_k: int,
              truth: str, quality: Callable[[float], float]) -> str:
    lines = [f"| supernet score | Kendall τ | Spearman ρ | top-{top_k} overlap |", "|---|---:|---:|---:|"]
    for name, label in SUPERNET_SCORES.items():
        m = measures[name]
        lines.append(f"| {label} | {m['kendall_tau']:+.3f} | {m['spearman_rho']:+.3f} | {m['top_k']:.2f} |")
    lines += ["", f"| trial | architecture | score at training | final supernet | {truth} |",
              "|---:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -quality(r["ground_truth"])):
        lines.append(f"| {r['trial']} | {code_cell(r['arch'])} | {r['at_training']:.4f} | {r['final']:.4f} "
                     f"| {r['ground_truth']:.4f} |")
    return "\n".join(lines)


def rank_run(run_dir: str | Path, *, ground_truth: str = "standalone", archs: int = 30, epochs: int | None = None,
             top_k: int = 5, key_column: str = "ArchitectureString", column: str = "accuracy",
             progress: bool = True, on_trained: Callable[[Architecture, float], None] | None = None) -> RankResult:
    """Compare the supernet's ranking of a run's architectures with the ground truth (module docstring).

    Args:
        run_dir: A search's run folder.
        ground_truth: ``standalone``, or the path of a CSV table.
        archs: How many architectures to compare (at most the distinct complete ones).
        epochs: Stand-alone training epochs [default: the run's ``epochs``].
        top_k: The k of the top-k overlap.
        key_column: The table's architecture-string column.
        column: The table's score column, in the run's direction (higher is better for accuracy, lower for perplexity).
        progress: Show a progress bar while training stand-alone.
        on_trained: Called with each architecture trained stand-alone now (not the cached ones).

    Raises:
        ConfigError: not a run folder, no complete trial, a bad option or table.
    """
    if archs < 2:
        raise ConfigError(f"archs must be >= 2 (a ranking needs two), but got archs={archs}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, but got top_k={top_k}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1, but got epochs={epochs}")
    run = load_run(run_dir)
    table = None if ground_truth == "standalone" else _read_table(Path(ground_truth), key=key_column, column=column)
    objective = SupernetObjective(run.config, run_dir=run.run_dir)  # the supernet's final weights
    quality = objective.trainer.metric.quality
    chosen = _choose(run.study, archs, quality)
    if len(chosen) < 2:
        raise ConfigError(f"run {run.run_dir} has {len(chosen)} distinct complete architecture(s); a ranking needs 2")
    out_dir = run.run_dir / RANK_DIR
    rows = []
    if table is None:
        cache_path = out_dir / "standalone.json"
        cache: dict[str, Any] = read_json(cache_path, what="stand-alone cache") if cache_path.is_file() else {}
        budget = epochs or run.config.epochs
        for trial, arch, score in tqdm(chosen, desc="stand-alone", unit="arch", disable=not progress):
            entry = cache.get(str(arch))
            if entry is None or entry["epochs"] != budget or entry["seed"] != run.config.seed:
                truth = train_standalone(run.config, objective.data, arch, epochs=budget, device=objective.device)
                cache[str(arch)] = entry = {"score": truth, "epochs": budget, "seed": run.config.seed}
                write_text_atomically(cache_path, json.dumps(cache, indent=1))
                if on_trained is not None:
                    on_trained(arch, truth)
            rows.append({"trial": trial, "arch": str(arch), "at_training": score, "final": objective.score(arch),
                         "ground_truth": float(entry["score"])})
        truth_label = f"stand-alone ({budget} epochs)"
    else:
        missing = [str(arch) for _, arch, _ in chosen if str(arch) not in table]
        rows = [{"trial": trial, "arch": str(arch), "at_training": score, "final": objective.score(arch),
                 "ground_truth": table[str(arch)]} for trial, arch, score in chosen if str(arch) in table]
        if len(rows) < 2:
            raise ConfigError(f"ground-truth table {ground_truth} has {len(rows)} of the {len(chosen)} architectures "
                              f"(e.g. {missing[0]!r} is missing from column {key_column!r}); a ranking needs 2")
        truth_label = f"{Path(ground_truth).name}: {column}"
    measures = _measures(rows, top_k, quality)
    text = _markdown(rows, measures, top_k=top_k, truth=truth_label, quality=quality)
    write_text_atomically(out_dir / RANKING_MD, f"# Ranking fidelity of {run.run_dir}\n\n{text}\n")
    lines = ["trial,arch,at_training,final,ground_truth"] + [
        f"{r['trial']},{r['arch']},{r['at_training']!r},{r['final']!r},{r['ground_truth']!r}" for r in rows]
    write_text_atomically(out_dir / RANKING_CSV, "\n".join(lines) + "\n")
    return RankResult(rows, measures, min(top_k, len(rows)), text, out_dir)
