"""Ranking fidelity: does the supernet rank its candidates as they rank on their own? (``wpl-nas rank``)

::

    from wpl_nas.fidelity import rank_run
    result = rank_run("runs/mnist1d-wpl", ground_truth="standalone", seeds=3)
    print(result.table)

The candidates are the distinct architectures of the run's complete trials (a repeated
architecture counts once, with its last trial); by default all of them, or with ``archs=N`` a
uniform random subset of N, drawn with the run's seed (each architecture gets a pseudo-random key
from the seed and its string; the N smallest keys are taken), so a rerun draws the same subset and
a search that went on keeps most of it. Each gets two supernet scores: its score at training (what
the search used) and its score with the supernet's final weights (after every later candidate
trained: what the supernet believes now). The ground truth is either

* ``standalone``: each architecture trained from scratch on its own ``seeds`` times (a fresh
  network, the run's data and optimiser settings, ``epochs`` epochs [default: the run's]; seed i
  is the run's seed + i and sets the initial weights and the data order) and scored on the same
  validation subset; its ground truth is the mean over the seeds. Every (architecture, epochs,
  seed) score is cached in ``RUN_DIR/rank/standalone.json`` as soon as it is trained, so an
  interrupted ranking resumes where it stopped, and more seeds, more architectures or another
  budget train only what is missing. With two or more seeds the **noise ceiling** is reported
  too: the mean Kendall τ (and Spearman ρ) between the scores of each pair of seeds over the same
  architectures, i.e. how well the ground truth agrees with itself. A supernet's τ is only as
  meaningful as that ceiling allows; or
* a CSV table keyed by architecture string (e.g. NAS-Bench-201 / NATS-Bench's topology table,
  whose ``ArchitectureString`` column holds strings in the format this library prints); no seeds,
  no ceiling.

Reported: Kendall's τ, Spearman's ρ (each beside its noise ceiling) and the top-k overlap between
each supernet score and the ground truth, in ``RUN_DIR/rank/ranking.md`` and ``ranking.csv`` (one
row per architecture; with stand-alone training one ``truth_seed_<seed>`` column per seed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm.auto import tqdm

from wpl_nas.assembly import assemble, build_supernet
from wpl_nas.config import MAX_SEED, SearchConfig
from wpl_nas.data import DataBundle
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import kendall_tau, spearman_rho, top_k_overlap
from wpl_nas.run_folder import RANK_DIR, RANKING_CSV, RANKING_MD, STANDALONE_JSON, TrainedSupernet, load_run
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import read_json, write_text_atomically
from wpl_nas.tracking.markdown import code_cell

__all__ = ["RankResult", "rank_run", "train_standalone"]

#: The stand-alone cache's format: ``{"format": 2, "scores": [{"arch", "epochs", "seed", "score"}, ...]}``.
CACHE_FORMAT = 2
#: Supernet scores compared with the ground truth: column name -> what it is.
SUPERNET_SCORES = {"at_training": "score at training", "final": "final supernet"}

#: A stand-alone score's cache key: (architecture string, epochs, seed).
CacheKey = tuple[str, int, int]


@dataclass
class RankResult:
    """What :func:`rank_run` returns.

    Attributes:
        rows: One per architecture, in trial order: ``trial``, ``arch``, ``at_training``, ``final``,
            ``ground_truth`` (with stand-alone training: the mean over the seeds) and ``truth_seeds``
            (the stand-alone score of each seed, in the order of ``seeds``; empty for a table).
        measures: ``{supernet score: {"kendall_tau", "spearman_rho", "top_k"}}``.
        top_k: The k of the top-k overlap.
        table: The report as Markdown.
        out_dir: Where ``ranking.md`` and ``ranking.csv`` were written.
        ceiling: The noise ceiling, ``{"kendall_tau", "spearman_rho"}``: the mean over pairs of seeds
            of the agreement between their stand-alone scores; None with one seed or a table.
        seeds: The stand-alone training seeds (empty for a table).
    """

    rows: list[dict[str, Any]]
    measures: dict[str, dict[str, float]]
    top_k: int
    table: str
    out_dir: Path
    ceiling: dict[str, float] | None = None
    seeds: list[int] = field(default_factory=list)


def train_standalone(config: SearchConfig, data: DataBundle, arch: Architecture, *, epochs: int,
                     device: torch.device | str = "cpu", seed: int | None = None) -> float:
    """``arch`` trained from scratch on its own, scored on ``config``'s fixed validation subset.

    Args:
        config: The run's settings (space, optimiser, batch sizes, evaluation subset).
        data: The run's data.
        arch: The architecture.
        epochs: Training epochs.
        device: Where to train.
        seed: Seeds the fresh weights and the data order [default: ``config.seed``].

    Returns:
        Its score (accuracy, or perplexity) after the last epoch.
    """
    seed = config.seed if seed is None else seed
    parts = assemble(build_supernet(config.space, data, seed=seed).standalone(arch), config, device=device)
    trainer = parts.trainer_for(data, epochs=epochs, seed=seed, eval_samples=config.eval_samples)
    return trainer.train(arch, trial_index=0).score


def _draw_key(seed: int, arch: str) -> int:
    """A pseudo-random key of ``arch`` for ``seed``: the smallest keys are a uniform random subset,
    the same on every rerun, independent of trial order."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{arch}".encode()).digest()[:8], "big")


def _choose(study: optuna.Study, count: int | None, *, seed: int) -> list[tuple[int, Architecture, float]]:
    """The distinct architectures of complete trials (a repeated one: its last trial), in trial order:
    all of them if ``count`` is None, else a uniform random subset of ``count`` drawn with ``seed``.

    Returns:
        ``(trial number, architecture, score at training)`` for each.
    """
    latest: dict[str, tuple[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        # A repeated architecture: its last trial.
        latest[t.user_attrs["arch"]] = (t.number, float(t.user_attrs["score_at_training"]))
    if count is not None and len(latest) > count:
        picked = sorted(latest, key=lambda arch: (_draw_key(seed, arch), arch))[:count]
        latest = {arch: latest[arch] for arch in picked}
    ordered = sorted(latest.items(), key=lambda kv: kv[1][0])
    return [(trial, Architecture.parse(arch), score) for arch, (trial, score) in ordered]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_cache(path: Path) -> dict[CacheKey, float]:
    """The stand-alone scores cached in ``path`` (the file of an older wpl-nas, one score per
    architecture, reads too).

    Raises:
        ConfigError: the file is not valid JSON or not a stand-alone cache (it names the file).
    """
    data = read_json(path, what="stand-alone cache")
    if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
        records = data.get("scores")
    elif isinstance(data, dict) and "format" not in data:  # older: {arch: {"score", "epochs", "seed"}}
        records = [{"arch": arch, **entry} if isinstance(entry, dict) else None for arch, entry in data.items()]
    else:
        records = None
    cache: dict[CacheKey, float] = {}
    for record in records if isinstance(records, list) else [None]:
        if not (isinstance(record, dict) and isinstance(record.get("arch"), str) and _is_int(record.get("epochs"))
                and _is_int(record.get("seed")) and isinstance(record.get("score"), int | float)
                and not isinstance(record.get("score"), bool)):
            raise ConfigError(f"stand-alone cache {path} is damaged or not a wpl-nas stand-alone cache "
                              f"(bad entry {repr(record)[:200]}); delete it to train the ground truth again")
        cache[(record["arch"], record["epochs"], record["seed"])] = float(record["score"])
    return cache


def _write_cache(path: Path, cache: dict[CacheKey, float]) -> None:
    """Write ``cache`` atomically, merged with what the file holds now (another ``rank`` of the same
    run may have added scores meanwhile)."""
    merged = {**(_read_cache(path) if path.is_file() else {}), **cache}
    records = [{"arch": arch, "epochs": epochs, "seed": seed, "score": score}
               for (arch, epochs, seed), score in sorted(merged.items())]
    write_text_atomically(path, json.dumps({"format": CACHE_FORMAT, "scores": records}, indent=1))


def _read_table(path: Path, *, key: str, column: str) -> dict[str, float]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            for name in (key, column):
                if name not in fields:
                    raise ConfigError(f"ground-truth table {path} has no column {name!r}; its columns: "
                                      f"{', '.join(fields) or 'none'}")
            table = {}
            for line, row in enumerate(reader, start=2):
                try:
                    value = float(row[column])
                except (TypeError, ValueError):
                    value = math.nan
                if not math.isfinite(value) or row[key] is None:
                    raise ConfigError(f"{path}, line {line}: {column}={row[column]!r} is not a finite number")
                table[row[key].strip()] = value
            return table
    except OSError as exc:
        raise ConfigError(f"cannot read ground-truth table {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"ground-truth table {path} is not a UTF-8 CSV file ({exc})") from None


def _measures(rows: Sequence[dict[str, Any]], top_k: int,
              quality: Callable[[float], float]) -> dict[str, dict[str, float]]:
    truth = [quality(r["ground_truth"]) for r in rows]  # rank correlations do not mind the sign; top-k does
    return {name: {"kendall_tau": kendall_tau([quality(r[name]) for r in rows], truth),
                   "spearman_rho": spearman_rho([quality(r[name]) for r in rows], truth),
                   "top_k": top_k_overlap([quality(r[name]) for r in rows], truth, top_k) if rows else math.nan}
            for name in SUPERNET_SCORES}


def _ceiling(rows: Sequence[dict[str, Any]], quality: Callable[[float], float]) -> dict[str, float] | None:
    """The noise ceiling: mean Kendall τ and Spearman ρ between the stand-alone scores of each pair
    of seeds over ``rows``' architectures; None with fewer than two seeds."""
    count = len(rows[0]["truth_seeds"]) if rows else 0
    if count < 2:
        return None
    by_seed = [[quality(r["truth_seeds"][i]) for r in rows] for i in range(count)]
    pairs = list(itertools.combinations(by_seed, 2))
    return {"kendall_tau": statistics.fmean(kendall_tau(a, b) for a, b in pairs),
            "spearman_rho": statistics.fmean(spearman_rho(a, b) for a, b in pairs)}


def _markdown(rows: Sequence[dict[str, Any]], measures: dict[str, dict[str, float]], *, top_k: int, truth: str,
              quality: Callable[[float], float], ceiling: dict[str, float] | None, seeds: Sequence[int]) -> str:
    if ceiling is None:
        lines = [f"| supernet score | Kendall τ | Spearman ρ | top-{top_k} overlap |", "|---|---:|---:|---:|"]
    else:
        lines = [f"| supernet score | Kendall τ | τ noise ceiling | Spearman ρ | ρ noise ceiling "
                 f"| top-{top_k} overlap |", "|---|---:|---:|---:|---:|---:|"]
    for name, label in SUPERNET_SCORES.items():
        m = measures[name]
        if ceiling is None:
            lines.append(f"| {label} | {m['kendall_tau']:+.3f} | {m['spearman_rho']:+.3f} | {m['top_k']:.2f} |")
        else:
            lines.append(f"| {label} | {m['kendall_tau']:+.3f} | {ceiling['kendall_tau']:+.3f} "
                         f"| {m['spearman_rho']:+.3f} | {ceiling['spearman_rho']:+.3f} | {m['top_k']:.2f} |")
    if ceiling is not None:
        lines += ["", f"Noise ceiling: the mean τ (ρ) between the stand-alone scores of two seeds, over the "
                      f"{math.comb(len(seeds), 2)} pair(s) of the {len(seeds)} seeds ({', '.join(map(str, seeds))}) "
                      f"and the same {len(rows)} architectures: how well the ground truth agrees with itself. "
                      "A supernet's τ near it is as good as this ground truth can tell."]
    per_seed = seeds if len(seeds) > 1 else []  # one column per seed, then the ground truth (their mean) last
    lines += ["", "| trial | architecture | score at training | final supernet |"
              + "".join(f" seed {s} |" for s in per_seed) + f" {truth} |",
              "|---:|---|---:|---:|" + "---:|" * len(per_seed) + "---:|"]
    for r in sorted(rows, key=lambda r: -quality(r["ground_truth"])):
        lines.append(f"| {r['trial']} | {code_cell(r['arch'])} | {r['at_training']:.4f} | {r['final']:.4f} |"
                     + "".join(f" {v:.4f} |" for v in r["truth_seeds"][:len(per_seed)]) + f" {r['ground_truth']:.4f} |")
    return "\n".join(lines)


def _csv(rows: Sequence[dict[str, Any]], seeds: Sequence[int]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "arch", "at_training", "final", "ground_truth", *(f"truth_seed_{s}" for s in seeds)])
    for r in rows:
        writer.writerow([r["trial"], r["arch"], repr(r["at_training"]), repr(r["final"]), repr(r["ground_truth"]),
                         *map(repr, r["truth_seeds"])])
    return out.getvalue()


def _standalone_truth(run_dir: Path, config: SearchConfig, trained: TrainedSupernet,
                      chosen: Sequence[tuple[int, Architecture, float]], *, epochs: int, seeds: Sequence[int],
                      progress: bool,
                      on_trained: Callable[[Architecture, float], None] | None) -> dict[str, list[float]]:
    """Each chosen architecture's stand-alone score per seed (``{arch string: [score of each seed]}``),
    trained only where the cache has none; the cache is rewritten after each training."""
    cache_path = run_dir / RANK_DIR / STANDALONE_JSON
    cache = _read_cache(cache_path) if cache_path.is_file() else {}
    todo = [(arch, seed) for _, arch, _ in chosen for seed in seeds if (str(arch), epochs, seed) not in cache]
    for arch, seed in tqdm(todo, desc="stand-alone", unit="run", disable=not progress):
        score = train_standalone(config, trained.data, arch, epochs=epochs, device=trained.device, seed=seed)
        cache[(str(arch), epochs, seed)] = score
        _write_cache(cache_path, cache)
        if on_trained is not None:
            on_trained(arch, score)
    return {str(arch): [cache[(str(arch), epochs, seed)] for seed in seeds] for _, arch, _ in chosen}


def rank_run(run_dir: str | Path, *, ground_truth: str = "standalone", archs: int | None = None, seeds: int = 2,
             epochs: int | None = None, top_k: int = 5, key_column: str = "ArchitectureString",
             column: str = "accuracy", progress: bool = True,
             on_trained: Callable[[Architecture, float], None] | None = None) -> RankResult:
    """Compare the supernet's ranking of a run's architectures with the ground truth (module docstring).

    Args:
        run_dir: A search's run folder.
        ground_truth: ``standalone``, or the path of a CSV table.
        archs: Compare a uniform random subset of this many of the distinct complete architectures,
            drawn with the run's seed (the same on a rerun) [default: all of them].
        seeds: Stand-alone trainings per architecture (seeds: the run's seed, + 1, ...); the ground
            truth is their mean, and with 2 or more the noise ceiling is reported. Unused with a table.
        epochs: Stand-alone training epochs [default: the run's ``epochs``].
        top_k: The k of the top-k overlap.
        key_column: The table's architecture-string column.
        column: The table's score column, in the run's direction (higher is better for accuracy, lower for perplexity).
        progress: Show a progress bar while training stand-alone.
        on_trained: Called with ``(architecture, score)`` after each stand-alone training done now
            (once per seed; not for the cached ones).

    Raises:
        ConfigError: not a run folder, no complete trial, a bad option or table, a damaged stand-alone cache.
    """
    if archs is not None and archs < 2:
        raise ConfigError(f"archs must be >= 2 (a ranking needs two), but got archs={archs}")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, but got seeds={seeds}")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, but got top_k={top_k}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1, but got epochs={epochs}")
    run = load_run(run_dir)
    if ground_truth == "standalone" and run.config.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(f"seeds={seeds} from the run's seed {run.config.seed} would go past the largest seed "
                          f"{MAX_SEED}; use seeds <= {MAX_SEED - run.config.seed + 1}")
    table = None if ground_truth == "standalone" else _read_table(Path(ground_truth), key=key_column, column=column)
    # The supernet's final weights, on this process's threads (not the run's: wpl_nas.threads).
    trained = run.folder.load_supernet()
    quality = trained.metric.quality
    chosen = _choose(run.study, archs, seed=run.config.seed)
    if len(chosen) < 2:
        raise ConfigError(f"run {run.run_dir} has {len(chosen)} distinct complete architecture(s); a ranking needs 2")
    out_dir = run.run_dir / RANK_DIR
    if table is None:
        budget = epochs or run.config.epochs
        seed_list = [run.config.seed + i for i in range(seeds)]
        truths = _standalone_truth(run.run_dir, run.config, trained, chosen, epochs=budget, seeds=seed_list,
                                   progress=progress, on_trained=on_trained)
        rows = [{"trial": trial, "arch": str(arch), "at_training": score, "final": trained.score(arch),
                 "ground_truth": statistics.fmean(truths[str(arch)]), "truth_seeds": truths[str(arch)]}
                for trial, arch, score in chosen]
        truth_label = (f"stand-alone ({budget} epochs, seed {seed_list[0]})" if seeds == 1
                       else f"stand-alone ({budget} epochs, mean of {seeds} seeds)")
    else:
        seed_list = []
        missing = [str(arch) for _, arch, _ in chosen if str(arch) not in table]
        rows = [{"trial": trial, "arch": str(arch), "at_training": score, "final": trained.score(arch),
                 "ground_truth": table[str(arch)], "truth_seeds": []} for trial, arch, score in chosen
                if str(arch) in table]
        if len(rows) < 2:
            raise ConfigError(f"ground-truth table {ground_truth} has {len(rows)} of the {len(chosen)} architectures "
                              f"(e.g. {missing[0]!r} is missing from column {key_column!r}); a ranking needs 2")
        truth_label = f"{Path(ground_truth).name}: {column}"
    measures = _measures(rows, top_k, quality)
    ceiling = _ceiling(rows, quality)
    text = _markdown(rows, measures, top_k=top_k, truth=truth_label, quality=quality, ceiling=ceiling,
                     seeds=seed_list)
    write_text_atomically(out_dir / RANKING_MD, f"# Ranking fidelity of {run.run_dir}\n\n{text}\n")
    write_text_atomically(out_dir / RANKING_CSV, _csv(rows, seed_list))
    return RankResult(rows, measures, min(top_k, len(rows)), text, out_dir, ceiling=ceiling, seeds=seed_list)
