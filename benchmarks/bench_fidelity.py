#!/usr/bin/env python
"""Ranking fidelity: does less forgetting give a better search?

Each *arm* is a named strategy configuration (``SearchConfig`` overrides, see ``ARMS`` below, or
``--arm NAME=JSON``). For each search seed and each arm, ``wpl_nas.run_search`` runs a search with
the ``random`` sampler on ``--space`` (``--trials`` candidates of ``--epochs`` epochs, one thread).
The search derives each trial's sampler seed from (seed, trial number), so all arms of one search
seed propose the same candidates in the same order: a **paired** comparison. The script checks this
(every trial's proposed parameters, arm against arm) and stops with exit status 1 if it does not hold.

Every distinct complete candidate of every run is then trained stand-alone
(``wpl_nas.fidelity.train_standalone``: a fresh network, the run's data, split and optimiser
settings) with ``--truth-seeds`` seeds (0, 1, ...) for ``--truth-epochs`` epochs; its *truth* is
the mean over the seeds. Per (arm, search seed) the report gives

* Kendall τ and Spearman ρ between the truth and (a) each candidate's score at training, (b) its
  score on the final supernet (``final.json``: every candidate re-scored after the last trial);
* the truth of the architecture chosen by final score and by score at training, the best truth
  among the run's candidates, and the regret (best − chosen);
* forgetting over all candidates (mean and max of score at training − final score) and the rank
  stability τ(score at training, final score);
* the **noise ceiling**: Kendall τ (Spearman ρ) between two truth seeds over the same candidates,
  mean over seed pairs; printed beside every τ (ρ). A τ near the ceiling is as good as this truth
  can tell.

Every arm is compared with the baseline (``--baseline``, default ``naive``), **paired by search
seed**: the per-seed differences in τ(final, truth), τ(training, truth) and the chosen
architecture's truth, their mean over seeds, and a 95% interval from a hierarchical bootstrap
(``--bootstrap`` replicates, fixed ``--bootstrap-seed``): in each replicate the candidates of every
search seed are resampled with replacement (the same indices for both arms, which share their
candidates), the measures are taken again on the resample and the per-seed differences averaged.
That interval holds the search seeds fixed (it says how much the candidates at hand support the
difference); a second interval also resamples the search seeds, and the per-seed values show the
seed-to-seed spread.

Usage::

    python benchmarks/bench_fidelity.py --quick                       # smoke run (what the test runs)
    python benchmarks/bench_fidelity.py --arms naive,wpl,wpl-cells --search-seeds 0,1,2 --trials 24 \\
        --epochs 2 --truth-seeds 2 --truth-epochs 10 --out fidelity.json
    python benchmarks/bench_fidelity.py --arms naive --arm 'wpl-k5={"strategy": "wpl", "wpl": {"protect": 5}}'
    python benchmarks/bench_fidelity.py --list                        # the arms, one line each

Everything is kept under ``--work-dir`` (default ``runs/bench-fidelity``): the run folders
(``runs/<space>-e<epochs>/<arm>-<options digest>-seed<seed>``; a finished search is reused, an interrupted one
resumed) and the stand-alone scores (``truth.json``, rewritten atomically after every training,
keyed by space, data split and training settings, architecture, epochs and seed), so a rerun, an
interrupted run or one with more arms or seeds trains only what is missing. Each search seed's
candidates are trained on that search's own data split (the split follows the seed), so their truth
is scored on the very validation subset the supernet scored them on. The Markdown report goes to
stdout (progress to stderr) and, with ``--out``, to a JSON file with every figure, the report and
the command line. ``--jobs N`` trains the ground truth in N processes of one thread each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import itertools
import json
import math
import multiprocessing
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step.py, next to this file

from _common import mean_std
from bench_step import machine

import wpl_nas
from wpl_nas.config import SearchConfig
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import METRICS, kendall_tau, spearman_rho
from wpl_nas.fidelity import train_standalone
from wpl_nas.selection import FinalScores
from wpl_nas.spaces import Architecture
from wpl_nas.strategies import resolve_strategy
from wpl_nas.tracking import read_json, write_text_atomically

#: The named arms: ``SearchConfig`` overrides (``section={...}`` is merged into the section's
#: defaults). Add an arm with one entry; ``--arm NAME=JSON`` adds one from the command line.
ARMS: dict[str, dict[str, Any]] = {
    "naive": {"strategy": "naive"},
    "wpl": {"strategy": "wpl"},
    "wpl-cells": {"strategy": "wpl", "wpl": {"include_global": False}},
    "wpl-a100": {"strategy": "wpl", "wpl": {"alpha": 100.0}},
    "wpl-a300": {"strategy": "wpl", "wpl": {"alpha": 300.0}},
    "wpl-a1000": {"strategy": "wpl", "wpl": {"alpha": 1000.0}},
    "wpl-cells-a100": {"strategy": "wpl", "wpl": {"include_global": False, "alpha": 100.0}},
    "wpl-decay": {"strategy": "wpl", "wpl": {"accumulate": "decay", "decay": 0.9}},
    "ewc": {"strategy": "ewc"},
    "online-ewc": {"strategy": "online-ewc"},
    "mas": {"strategy": "mas"},
    "distill": {"strategy": "distill"},
    "hat": {"strategy": "hat"},
}

#: Settings the benchmark itself controls; an arm may not override them (the pairing, the
#: ground truth and the run folders depend on them).
CONTROLLED = ("space", "dataset", "data_dir", "download", "val_fraction", "train_samples", "seed", "sampler", "trials",
              "epochs", "runs_dir", "study_name", "storage", "threads", "device", "final_top_k", "objectives")
#: Settings that stand-alone training reads (``train_standalone``); the truth uses the baseline's.
TRUTH_FIELDS = ("space", "dataset", "val_fraction", "train_samples", "seed", "lr", "momentum", "weight_decay",
                "batch_size", "grad_clip", "eval_samples", "eval_batch_size")

#: A tiny space for ``--quick`` (the tests' own).
TINY_SPACE = Path(__file__).resolve().parent / "spaces" / "tiny1d.yaml"

TRUTH_FILE = "truth.json"
TRUTH_FORMAT = 1
#: The measures compared with the baseline: key -> label.
COMPARED = {"tau_final": "τ(final, truth)", "tau_training": "τ(training, truth)",
            "chosen_final_truth": "truth of the chosen (by final)",
            "chosen_training_truth": "truth of the chosen (by training)"}
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- arms -------------------------------------------------------------------------------------

def parse_arms(names: str, extra: Sequence[str], baseline: str) -> dict[str, dict[str, Any]]:
    """The arms to run, in order: ``names`` from :data:`ARMS`, then each ``NAME=JSON`` of ``extra``;
    the baseline first if it is not among them.

    Raises:
        SystemExit: an unknown or repeated name, malformed JSON, a controlled setting overridden.
    """
    arms: dict[str, dict[str, Any]] = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; choose from {', '.join(ARMS)} or define one with --arm NAME=JSON")
        if name in arms:
            raise SystemExit(f"arm {name!r} is listed twice")
        arms[name] = ARMS[name]
    for spec in extra:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not ARM_NAME.fullmatch(name):
            raise SystemExit(f"--arm {spec!r}: expected NAME=JSON with NAME of letters, digits, '.', '_', '-'")
        if name in arms:
            raise SystemExit(f"arm {name!r} is defined twice")
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--arm {name}: malformed JSON ({exc})") from None
        if not isinstance(overrides, dict):
            raise SystemExit(f"--arm {name}: the JSON must be an object of SearchConfig overrides, got {text!r}")
        arms[name] = overrides
    if baseline not in arms:
        if baseline not in ARMS:
            raise SystemExit(f"the baseline {baseline!r} is neither listed nor a named arm")
        arms = {baseline: ARMS[baseline], **arms}
    for name, overrides in arms.items():
        bad = sorted(set(overrides) & set(CONTROLLED))
        if bad:
            raise SystemExit(f"arm {name!r} sets {', '.join(bad)}; the benchmark controls these "
                             f"({', '.join(CONTROLLED)}): use the script's flags")
    if len(arms) < 2:
        raise SystemExit("a comparison needs at least two arms (the baseline and one more)")
    return arms


def arm_config(base: SearchConfig, name: str, overrides: dict[str, Any]) -> SearchConfig:
    """``base`` with the arm's overrides and its study name, validated (unknown options, bad values
    and unknown strategies fail here, before any search runs). The study name carries a digest of
    every option the arm may set, so a reused work folder never passes a run made with other
    options (say, before a default changed) for this arm's."""
    try:
        config = base.replace(**overrides)
        options = {k: v for k, v in config.flat().items() if k not in CONTROLLED}
        digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
        config = config.replace(study_name=f"{name}-{digest}-seed{base.seed}")
        config.validate()
        resolve_strategy(config.strategy)
    except ConfigError as exc:
        raise ConfigError(f"arm {name!r} ({json.dumps(overrides)}): {exc}") from None
    return config


# --- searches ---------------------------------------------------------------------------------

def space_key(space: str) -> str:
    """A name for the space in folder names and the truth cache: a built-in name as is, a YAML file
    as its stem and a hash of its content (an edited file is another space)."""
    path = Path(space)
    if space.endswith((".yaml", ".yml")) and path.is_file():
        return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:10]}"
    return space


def one_search(config: SearchConfig, arm: str, trials: int) -> dict[str, Any]:
    """Run (or resume, or reuse) one search; what the benchmark needs from it."""
    done = (config.run_dir / "final.json").is_file()
    start = time.perf_counter()
    command = ["benchmarks/bench_fidelity.py", f"arm={arm}", f"seed={config.seed}"]
    result = wpl_nas.run_search(config, progress=False, command=command)
    seconds = time.perf_counter() - start
    study = result.study
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(finished) != trials:
        raise SystemExit(f"run {config.run_dir} holds {len(finished)} finished trials, not --trials {trials}: it was "
                         "extended by an earlier, longer run; use another --work-dir")
    if result.final is None:
        raise SystemExit(f"run {config.run_dir} has no final scores (no complete trial?)")
    final: FinalScores = result.final
    if final.after_trial != max(t.number for t in finished):
        raise SystemExit(f"run {config.run_dir}: its final scores are older than its last trial")
    # What the sampler proposed, trial after trial (a failed trial, e.g. one interrupted and trained
    # again on resume, is left out: the search proposes the same candidate at the same position).
    proposals = [{"number": t.number, "state": t.state.name, "params": dict(sorted(t.params.items()))}
                 for t in sorted(finished, key=lambda t: t.number)]
    complete = {t.user_attrs["arch"] for t in finished if t.state == TrialState.COMPLETE}
    rows = {r["arch"]: r for r in final.rows}
    if set(rows) != complete:
        raise SystemExit(f"run {config.run_dir}: final.json re-scored {len(rows)} of its {len(complete)} distinct "
                         "candidates; the benchmark needs all of them (final_top_k 0)")
    measures = final.measures()
    log(f"  {arm:>14s} seed {config.seed}: {len(rows)} candidates, forgetting mean {measures['forgetting_mean']:+.4f} "
        f"max {measures['forgetting_max']:+.4f}, stability τ {measures['stability_tau']:+.3f} "
        f"({'reused' if done else f'{seconds:.0f} s'})")
    return {"arm": arm, "seed": config.seed, "run_dir": str(config.run_dir), "seconds": seconds, "reused": done,
            "metric": final.metric, "proposals": proposals, "rows": final.rows,
            "best_final_arch": final.best("final")["arch"], "best_training_arch": final.best("training")["arch"],
            "final_measures": measures, "config": {k: v for k, v in config.to_dict().items() if k in TRUTH_FIELDS}}


def verify_pairing(runs: dict[tuple[str, int], dict[str, Any]], arms: Sequence[str], seeds: Sequence[int],
                   baseline: str) -> dict[str, Any]:
    """Check that all arms of each search seed proposed the same candidates in the same order.

    Raises:
        SystemExit: they did not (the comparison would not be paired).
    """
    for seed in seeds:
        reference = runs[(baseline, seed)]["proposals"]
        for arm in arms:
            other = runs[(arm, seed)]["proposals"]
            if len(other) != len(reference):
                raise SystemExit(f"pairing broken: seed {seed}: {arm} has {len(other)} trials, {baseline} "
                                 f"{len(reference)}")
            for a, b in zip(reference, other, strict=True):
                if a["params"] != b["params"] or a["state"] != b["state"]:
                    raise SystemExit(f"pairing broken: seed {seed}, trial {a['number']} of {baseline} / {b['number']} "
                                     f"of {arm}: {baseline} proposed {a['params']} ({a['state']}), {arm} "
                                     f"{b['params']} ({b['state']})")
            if {r["arch"] for r in runs[(arm, seed)]["rows"]} != {r["arch"] for r in runs[(baseline, seed)]["rows"]}:
                raise SystemExit(f"pairing broken: seed {seed}: {arm}'s candidates differ from {baseline}'s")
    return {"verified": True, "seeds": list(seeds), "arms": list(arms),
            "trials_per_seed": {str(s): len(runs[(baseline, s)]["proposals"]) for s in seeds}}


# --- ground truth -----------------------------------------------------------------------------

#: A truth cache key: (space key, data key, architecture, epochs, seed).
TruthKey = tuple[str, str, str, int, int]


def data_key(config: dict[str, Any]) -> str:
    """The data split a truth score was trained and scored on, and a hash of the other settings that
    stand-alone training reads (optimiser, batch sizes, evaluation subset)."""
    settings = json.dumps({k: config[k] for k in TRUTH_FIELDS if k not in ("space", "dataset", "val_fraction", "seed")},
                          sort_keys=True)
    return (f"{config['dataset']}:val{config['val_fraction']}:split{config['seed']}:"
            f"train-{hashlib.sha256(settings.encode()).hexdigest()[:8]}")


def read_truth(path: Path) -> dict[TruthKey, float]:
    if not path.is_file():
        return {}
    data = read_json(path, what="stand-alone truth cache")
    if not (isinstance(data, dict) and data.get("format") == TRUTH_FORMAT and isinstance(data.get("scores"), list)):
        raise SystemExit(f"{path} is not a truth cache of this benchmark; delete it or use another --work-dir")
    return {(r["space"], r["data"], r["arch"], int(r["epochs"]), int(r["seed"])): float(r["score"])
            for r in data["scores"]}


def write_truth(path: Path, cache: dict[TruthKey, float]) -> None:
    records = [{"space": s, "data": d, "arch": a, "epochs": e, "seed": seed, "score": score}
               for (s, d, a, e, seed), score in sorted(cache.items())]
    write_text_atomically(path, json.dumps({"format": TRUTH_FORMAT, "scores": records}, indent=1))


_DATA: dict[tuple[Any, ...], wpl_nas.DataBundle] = {}


def train_truth(config: dict[str, Any], arch: str, epochs: int, seed: int) -> tuple[float, float]:
    """One stand-alone training on the run's data (loaded once per process); (score, seconds)."""
    torch.set_num_threads(1)
    cfg = SearchConfig.from_dict(config)
    key = (cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.seed, cfg.train_samples)
    if key not in _DATA:
        _DATA[key] = wpl_nas.load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                                          seed=cfg.seed, train_samples=cfg.train_samples)
    start = time.perf_counter()
    score = train_standalone(cfg, _DATA[key], Architecture.parse(arch), epochs=epochs, device="cpu", seed=seed)
    return score, time.perf_counter() - start


def ground_truth(runs: dict[tuple[str, int], dict[str, Any]], seeds: Sequence[int], baseline: str, *,
                 space: str, epochs: int, truth_seeds: Sequence[int], path: Path, jobs: int) -> dict[str, Any]:
    """Each search seed's candidates trained stand-alone with every truth seed (cached in ``path``).

    Returns:
        ``{"scores": {str(seed): {arch: [score per truth seed]}}, "trained", "seconds", ...}``.
    """
    cache = read_truth(path)
    tasks: list[tuple[TruthKey, dict[str, Any]]] = []
    wanted: dict[int, list[tuple[str, TruthKey]]] = {}
    for seed in seeds:
        base = runs[(baseline, seed)]
        config = wpl_nas.load_run(base["run_dir"]).config.to_dict()
        dkey = data_key(config)
        archs = sorted({r["arch"] for r in base["rows"]})
        wanted[seed] = []
        for arch in archs:
            for ts in truth_seeds:
                key = (space, dkey, arch, epochs, ts)
                wanted[seed].append((arch, key))
                if key not in cache and key not in {k for k, _ in tasks}:
                    tasks.append((key, config))
    total = len({k for keys in wanted.values() for _, k in keys})
    log(f"ground truth: {total} stand-alone trainings ({len(tasks)} to train, {total - len(tasks)} cached), "
        f"{epochs} epochs each, {jobs} job(s)")
    durations: list[float] = []
    started = time.perf_counter()

    def record(key: TruthKey, score: float, seconds: float) -> None:
        cache[key] = score
        durations.append(seconds)
        write_truth(path, cache)
        done = len(durations)
        eta = (time.perf_counter() - started) / done * (len(tasks) - done)
        log(f"  truth {done}/{len(tasks)}: {key[2]} seed {key[4]} (split {key[1]}): {score:.4f} "
            f"({seconds:.1f} s; about {eta / 60:.1f} min left)")

    if jobs <= 1:
        for key, config in tasks:
            record(key, *train_truth(config, key[2], epochs, key[4]))
    elif tasks:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(train_truth, config, key[2], epochs, key[4]): key for key, config in tasks}
            for future in concurrent.futures.as_completed(futures):
                record(futures[future], *future.result())
    scores = {str(seed): {} for seed in seeds}
    for seed in seeds:
        for arch, key in wanted[seed]:
            scores[str(seed)].setdefault(arch, []).append(cache[key])
    return {"scores": scores, "trained": len(tasks), "cached": total - len(tasks),
            "seconds_per_training": statistics.fmean(durations) if durations else None,
            "seconds": time.perf_counter() - started}


# --- measures ---------------------------------------------------------------------------------

@dataclass
class SeedData:
    """One search seed's candidates (a fixed order shared by all arms) and their scores as quality
    (higher is better), per arm."""

    seed: int
    metric: str
    archs: list[str]
    trial: np.ndarray  # the candidate's (last) trial number
    truth: np.ndarray  # quality of the mean over truth seeds
    truth_raw: np.ndarray  # the mean over truth seeds, in the metric's own units
    truth_seeds: np.ndarray  # (candidates, truth seeds), quality
    training: dict[str, np.ndarray]
    final: dict[str, np.ndarray]


def nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def ceiling(truth_seeds: np.ndarray) -> dict[str, float]:
    """Mean τ and ρ between the truth seeds' scores over pairs of seeds (NaN with one seed)."""
    pairs = list(itertools.combinations(range(truth_seeds.shape[1]), 2))
    return {"kendall_tau": nanmean([kendall_tau(truth_seeds[:, i].tolist(), truth_seeds[:, j].tolist())
                                    for i, j in pairs]),
            "spearman_rho": nanmean([spearman_rho(truth_seeds[:, i].tolist(), truth_seeds[:, j].tolist())
                                     for i, j in pairs])}


def chosen(score: np.ndarray, trial: np.ndarray) -> int:
    """The index of the best candidate by ``score`` (ties: the earlier trial), as ``FinalScores.best``."""
    return int(np.lexsort((trial, -score))[0])


def seed_measures(data: SeedData, arm: str, run: dict[str, Any]) -> dict[str, Any]:
    training, final = data.training[arm], data.final[arm]
    by_final, by_training = chosen(final, data.trial), chosen(training, data.trial)
    if data.archs[by_final] != run["best_final_arch"] or data.archs[by_training] != run["best_training_arch"]:
        raise SystemExit(f"{arm} seed {data.seed}: the chosen architecture differs from the library's choice")
    best = float(np.max(data.truth))
    m = {"candidates": len(data.archs),
         "tau_training": kendall_tau(training.tolist(), data.truth.tolist()),
         "tau_final": kendall_tau(final.tolist(), data.truth.tolist()),
         "rho_training": spearman_rho(training.tolist(), data.truth.tolist()),
         "rho_final": spearman_rho(final.tolist(), data.truth.tolist()),
         "chosen_final_arch": data.archs[by_final], "chosen_final_truth": float(data.truth_raw[by_final]),
         "chosen_training_arch": data.archs[by_training], "chosen_training_truth": float(data.truth_raw[by_training]),
         "best_truth": float(data.truth_raw[int(np.argmax(data.truth))]),
         "regret_final": best - float(data.truth[by_final]), "regret_training": best - float(data.truth[by_training]),
         **{k: run["final_measures"][k] for k in ("forgetting_mean", "forgetting_max", "stability_tau")}}
    m.update({f"ceiling_{k}": v for k, v in ceiling(data.truth_seeds).items()})
    return m


def _sign(v: np.ndarray) -> np.ndarray:
    return np.sign(v[:, None] - v[None, :]).astype(np.int8)


def _tau_resampled(sa: np.ndarray, sb: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall τ-b (as ``kendall_tau``) of every resample ``idx`` (replicates × candidates), from the
    pairwise sign matrices of the two score lists."""
    out = np.empty(len(idx))
    step = max(1, 4_000_000 // max(1, idx.shape[1] ** 2))  # replicates at a time: bounded memory
    for lo in range(0, len(idx), step):
        part = idx[lo: lo + step]
        a = sa[part[:, :, None], part[:, None, :]].astype(np.int32)
        b = sb[part[:, :, None], part[:, None, :]].astype(np.int32)
        num = (a * b).sum(axis=(1, 2))
        den = np.sqrt((a != 0).sum(axis=(1, 2)).astype(float) * (b != 0).sum(axis=(1, 2)))
        out[lo: lo + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def _chosen_resampled(score: np.ndarray, trial: np.ndarray, truth: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The truth of the best candidate by ``score`` (ties: the earlier trial) in every resample."""
    order = np.empty(len(score), dtype=np.int64)
    order[np.lexsort((trial, -score))] = np.arange(len(score))  # 0 = chosen
    picked = np.take_along_axis(idx, np.argmin(order[idx], axis=1)[:, None], axis=1)[:, 0]
    return truth[picked]


def bootstrap(seeds: Sequence[SeedData], arms: Sequence[str], baseline: str, *, replicates: int,
              rng_seed: int) -> dict[str, Any]:
    """Hierarchical bootstrap of each arm's paired differences from the baseline (module docstring).

    Returns:
        ``{arm: {measure: {"per_seed", "mean", "ci_candidates", "ci_seeds_candidates", "p_better", "replicates"}}}``
        and the same for each arm's own values under ``"values"``.
    """
    rng = np.random.default_rng(rng_seed)
    draws = {d.seed: rng.integers(0, len(d.archs), size=(replicates, len(d.archs))) for d in seeds}
    seed_draw = rng.integers(0, len(seeds), size=(replicates, len(seeds)))
    # Per arm, per measure: (replicates, seeds) values on the resamples.
    values: dict[str, dict[str, np.ndarray]] = {}
    point: dict[str, dict[str, np.ndarray]] = {}
    for arm in arms:
        values[arm] = {k: np.empty((replicates, len(seeds))) for k in COMPARED}
        point[arm] = {k: np.empty(len(seeds)) for k in COMPARED}
        for j, d in enumerate(seeds):
            idx = draws[d.seed]
            whole = np.arange(len(d.archs))[None, :]
            st = _sign(d.truth)
            for key, score in (("tau_final", d.final[arm]), ("tau_training", d.training[arm])):
                sa = _sign(score)
                values[arm][key][:, j] = _tau_resampled(sa, st, idx)
                point[arm][key][j] = _tau_resampled(sa, st, whole)[0]
            for key, score in (("chosen_final_truth", d.final[arm]), ("chosen_training_truth", d.training[arm])):
                values[arm][key][:, j] = _chosen_resampled(score, d.trial, d.truth_raw, idx)
                point[arm][key][j] = _chosen_resampled(score, d.trial, d.truth_raw, whole)[0]

    # A chosen architecture's truth is in the metric's units: better is higher for accuracy, lower for perplexity.
    quality = METRICS.get(seeds[0].metric).quality
    higher_is_better = quality(1.0) > quality(0.0)

    def summarise(per_seed: np.ndarray, reps: np.ndarray, key: str) -> dict[str, Any]:
        better = 1.0 if key.startswith("tau") or higher_is_better else -1.0
        with warnings.catch_warnings():  # a resample whose τ is undefined in every seed: NaN, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            inner = np.nanmean(reps, axis=1)
            outer = np.nanmean(np.take_along_axis(reps, seed_draw, axis=1), axis=1)
        inner, outer = inner[~np.isnan(inner)], outer[~np.isnan(outer)]
        return {"per_seed": [float(v) for v in per_seed], "mean": nanmean(per_seed.tolist()),
                "ci_candidates": [float(np.percentile(inner, 2.5)), float(np.percentile(inner, 97.5))]
                if len(inner) else [math.nan, math.nan],
                "ci_seeds_candidates": [float(np.percentile(outer, 2.5)), float(np.percentile(outer, 97.5))]
                if len(outer) else [math.nan, math.nan],
                "p_better": float(np.mean(better * inner > 0)) if len(inner) else math.nan, "replicates": len(inner)}

    out: dict[str, Any] = {"values": {}, "differences": {}}
    for arm in arms:
        out["values"][arm] = {k: summarise(point[arm][k], values[arm][k], k) for k in COMPARED}
        if arm != baseline:
            out["differences"][arm] = {k: summarise(point[arm][k] - point[baseline][k],
                                                    values[arm][k] - values[baseline][k], k) for k in COMPARED}
    return out


def collect(runs: dict[tuple[str, int], dict[str, Any]], truth: dict[str, Any], arms: Sequence[str],
            seeds: Sequence[int], baseline: str) -> list[SeedData]:
    out = []
    for seed in seeds:
        base = runs[(baseline, seed)]
        quality: Callable[[float], float] = METRICS.get(base["metric"]).quality
        rows = sorted(base["rows"], key=lambda r: r["trial"])
        archs = [r["arch"] for r in rows]
        scores = truth["scores"][str(seed)]
        by_arm = {arm: {r["arch"]: r for r in runs[(arm, seed)]["rows"]} for arm in arms}
        out.append(SeedData(
            seed=seed, metric=base["metric"], archs=archs, trial=np.array([r["trial"] for r in rows]),
            truth=np.array([quality(statistics.fmean(scores[a])) for a in archs]),
            truth_raw=np.array([statistics.fmean(scores[a]) for a in archs]),
            truth_seeds=np.array([[quality(s) for s in scores[a]] for a in archs]),
            training={arm: np.array([quality(by_arm[arm][a]["at_training"]) for a in archs]) for arm in arms},
            final={arm: np.array([quality(by_arm[arm][a]["final"]) for a in archs]) for arm in arms}))
    return out


# --- report -----------------------------------------------------------------------------------

def _f(value: float, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)



def _ci(ci: Sequence[float], spec: str) -> str:
    return f"[{_f(ci[0], spec)}, {_f(ci[1], spec)}]"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    arms, seeds, baseline = s["arms"], s["search_seeds"], s["baseline"]
    per = report["per_run"]
    boot = report["bootstrap"]
    lines = [
        "## Ranking fidelity: does less forgetting give a better search?", "",
        f"Command: `{report['command']}`", "",
        f"{report['environment']['date'][:10]}; torch {report['environment']['torch']}; "
        f"{report['environment']['cpu']}; one thread per process. Space `{s['space']}`, data {s['dataset']}; "
        f"search seeds {', '.join(map(str, seeds))}; {s['trials']} trials × {s['epochs']} epochs per search, sampler "
        f"random; truth: stand-alone training, {len(s['truth_seeds'])} seeds × {s['truth_epochs']} epochs; "
        f"bootstrap {s['bootstrap']} replicates (seed {s['bootstrap_seed']}); "
        f"{report['seconds'] / 60:.1f} min ({report['truth']['trained']} stand-alone trainings now, "
        f"{report['truth']['cached']} cached).", "",
        f"**Pairing verified**: in every search seed all {len(arms)} arms proposed the same "
        f"{s['trials']} candidates in the same order.", "",
        "Arms: " + "; ".join(f"`{a}` = `{json.dumps(s['arm_overrides'][a])}`" for a in arms), "",
        "### Per arm (mean ± sample std over search seeds)", "",
        "| arm | τ(final, truth) | τ(training, truth) | τ ceiling | ρ(final, truth) | ρ(training, truth) | ρ ceiling "
        "| truth of chosen (final) | truth of chosen (training) | best truth | regret (final) | regret (training) "
        "| forgetting mean | forgetting max | stability τ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm in arms:
        rows = [per[f"{arm}/{seed}"] for seed in seeds]

        def col(key: str, spec: str, rows: list[dict[str, Any]] = rows) -> str:
            return mean_std([r[key] for r in rows], spec)

        lines.append(f"| {arm} | {col('tau_final', '+.3f')} | {col('tau_training', '+.3f')} "
                     f"| {col('ceiling_kendall_tau', '+.3f')} | {col('rho_final', '+.3f')} "
                     f"| {col('rho_training', '+.3f')} | {col('ceiling_spearman_rho', '+.3f')} "
                     f"| {col('chosen_final_truth', '.4f')} | {col('chosen_training_truth', '.4f')} "
                     f"| {col('best_truth', '.4f')} | {col('regret_final', '.4f')} | {col('regret_training', '.4f')} "
                     f"| {col('forgetting_mean', '+.4f')} | {col('forgetting_max', '+.4f')} "
                     f"| {col('stability_tau', '+.3f')} |")
    lines += ["", "### Per search seed", "",
              "| seed | arm | candidates | τ(final, truth) | τ(training, truth) | τ ceiling | truth of chosen (final) "
              "| truth of chosen (training) | best truth | forgetting mean / max | chosen by final |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for seed in seeds:
        for arm in arms:
            r = per[f"{arm}/{seed}"]
            lines.append(f"| {seed} | {arm} | {r['candidates']} | {_f(r['tau_final'], '+.3f')} "
                         f"| {_f(r['tau_training'], '+.3f')} | {_f(r['ceiling_kendall_tau'], '+.3f')} "
                         f"| {r['chosen_final_truth']:.4f} | {r['chosen_training_truth']:.4f} | {r['best_truth']:.4f} "
                         f"| {r['forgetting_mean']:+.4f} / {r['forgetting_max']:+.4f} | `{r['chosen_final_arch']}` |")
    lines += ["", f"### Against `{baseline}`, paired by search seed", "",
              "| arm | measure | per seed (arm − baseline) | mean | 95% CI, candidates | 95% CI, seeds + candidates "
              "| P(better) | ceiling τ |",
              "|---|---|---|---:|---|---|---:|---:|"]
    ceil = mean_std([per[f"{baseline}/{seed}"]["ceiling_kendall_tau"] for seed in seeds], "+.3f")
    for arm in arms:
        if arm == baseline:
            continue
        for key, label in COMPARED.items():
            d = boot["differences"][arm][key]
            spec = "+.3f" if key.startswith("tau") else "+.4f"
            lines.append(f"| {arm} | {label} | {', '.join(_f(v, spec) for v in d['per_seed'])} | {_f(d['mean'], spec)} "
                         f"| {_ci(d['ci_candidates'], spec)} | {_ci(d['ci_seeds_candidates'], spec)} "
                         f"| {_f(d['p_better'], '.2f')} | {ceil if key.startswith('tau') else ''} |")
    lines += ["",
              "τ, ρ: Kendall's τ-b and Spearman's ρ between the supernet's scores of a run's distinct candidates "
              "(at training, or re-scored on the final supernet) and their truth (mean over the truth seeds). "
              "Ceiling: the same between two truth seeds, mean over seed pairs; a τ near it is as good as this truth "
              "can tell. Chosen: the best candidate by final score or by score at training; regret: best truth − its "
              "truth. Forgetting over all candidates: score at training − final score. CI, candidates: hierarchical "
              "bootstrap resampling the candidates of each search seed (the same resample for both arms) with the "
              "search seeds fixed, mean of the per-seed differences; seeds + candidates: the search seeds resampled "
              "too. P(better): share of the candidate resamples where the arm beats the baseline."]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--search-seeds {text!r}: expected comma-separated integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--search-seeds {text!r}: expected distinct seeds")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="naive,wpl,wpl-cells",
                        help=f"comma-separated named arms (default naive,wpl,wpl-cells): {', '.join(ARMS)}")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=JSON",
                        help="an extra arm: SearchConfig overrides as JSON, e.g. "
                             "'wpl-a10={\"strategy\": \"wpl\", \"wpl\": {\"alpha\": 10}}' (repeatable)")
    parser.add_argument("--baseline", default="naive", help="the arm every other is compared with (default naive)")
    parser.add_argument("--space", default="mnist1d", help="a built-in space or a YAML file (default mnist1d)")
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--train-samples", type=int, default=0,
                        help="search and truth on the first N training samples (0: all; default 0)")
    parser.add_argument("--search-seeds", default="0,1,2", help="comma-separated search seeds (default 0,1,2)")
    parser.add_argument("--trials", type=int, default=24, help="candidates per search (default 24)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per candidate in the search (default 2)")
    parser.add_argument("--truth-seeds", type=int, default=2, help="stand-alone trainings per candidate (default 2)")
    parser.add_argument("--truth-epochs", type=int, default=10, help="epochs of each stand-alone training (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="stand-alone trainings in parallel processes (default 1)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (>= 1000; default 2000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path,
                        help="run folders and the truth cache (default runs/bench-fidelity; --quick: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--out", "--json", dest="out", type=Path,
                        help="write every figure, the report and the command line to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the named arms and exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the tests' tiny space, seeds 0,1, 4 trials of 1 epoch, arms naive,wpl, "
                             "truth 2 seeds x 1 epoch, 1000 bootstrap replicates")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/bench_fidelity.py", *(sys.argv[1:] if argv is None else argv)])
    if args.list:
        for name, overrides in ARMS.items():
            print(f"{name}: {json.dumps(overrides)}")
        return 0
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    temporary = args.work_dir is None and args.quick
    work_dir: Path = args.work_dir or (Path(tempfile.mkdtemp(prefix="bench-fidelity-")) if args.quick
                                       else Path("runs") / "bench-fidelity")
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.space, args.search_seeds, args.trials, args.epochs = str(TINY_SPACE), "0,1", 4, 1
        args.truth_seeds, args.truth_epochs, args.bootstrap = 2, 1, 1000
        if args.arms == parser.get_default("arms"):
            args.arms = "naive,wpl"
    seeds = parse_seeds(args.search_seeds)
    if args.trials < 2 or args.epochs < 1 or args.truth_epochs < 1 or args.truth_seeds < 1 or args.jobs < 1:
        raise SystemExit("--trials must be >= 2; --epochs, --truth-epochs, --truth-seeds and --jobs >= 1")
    if args.bootstrap < 1000:
        raise SystemExit("--bootstrap must be >= 1000")
    arms = parse_arms(args.arms, args.arm, args.baseline)
    skey = space_key(args.space)
    subset = f"-n{args.train_samples}" if args.train_samples else ""
    runs_dir = work_dir / "runs" / f"{skey}-e{args.epochs}{subset}"
    base = SearchConfig(space=args.space, dataset=args.dataset, data_dir=args.data_dir, sampler="random",
                        train_samples=args.train_samples,
                        trials=args.trials, epochs=args.epochs, runs_dir=str(runs_dir), threads=1, device="cpu",
                        final_top_k=0)
    configs = {(arm, seed): arm_config(base.replace(seed=seed), arm, overrides)
               for seed in seeds for arm, overrides in arms.items()}  # every arm checked before any search
    wpl_nas.load_space(args.space)
    start = time.perf_counter()
    try:
        log(f"searches: {len(arms)} arms × {len(seeds)} seeds, {args.trials} trials × {args.epochs} epochs, "
            f"under {runs_dir}")
        runs = {key: one_search(config, key[0], args.trials) for key, config in configs.items()}
        pairing = verify_pairing(runs, list(arms), seeds, args.baseline)
        log("pairing verified: every arm of each seed proposed the same candidates in the same order")
        for seed in seeds:
            for arm in arms:
                differs = {k for k in TRUTH_FIELDS if runs[(arm, seed)]["config"][k]
                           != runs[(args.baseline, seed)]["config"][k]}
                if differs:
                    log(f"note: arm {arm} changes {', '.join(sorted(differs))}; the truth uses the baseline's settings")
        truth = ground_truth(runs, seeds, args.baseline, space=skey, epochs=args.truth_epochs,
                             truth_seeds=list(range(args.truth_seeds)), path=work_dir / TRUTH_FILE, jobs=args.jobs)
        data = collect(runs, truth, list(arms), seeds, args.baseline)
        per_run = {f"{arm}/{d.seed}": seed_measures(d, arm, runs[(arm, d.seed)]) for d in data for arm in arms}
        boot = bootstrap(data, list(arms), args.baseline, replicates=args.bootstrap, rng_seed=args.bootstrap_seed)
        for d in data:  # the bootstrap's own τ agrees with the library's on the whole sample
            for arm in arms:
                for key in ("tau_final", "tau_training"):
                    mine = boot["values"][arm][key]["per_seed"][seeds.index(d.seed)]
                    theirs = per_run[f"{arm}/{d.seed}"][key]
                    if not (math.isclose(mine, theirs, abs_tol=1e-9) or (math.isnan(mine) and math.isnan(theirs))):
                        raise SystemExit(f"internal error: bootstrap τ {mine} != kendall_tau {theirs}")
        report: dict[str, Any] = {
            "command": command, "environment": machine(torch.device("cpu")), "seconds": time.perf_counter() - start,
            "settings": {"arms": list(arms), "arm_overrides": arms, "baseline": args.baseline, "space": args.space,
                         "space_key": skey, "dataset": args.dataset, "train_samples": args.train_samples,
                         "search_seeds": seeds, "trials": args.trials,
                         "epochs": args.epochs, "truth_seeds": list(range(args.truth_seeds)),
                         "truth_epochs": args.truth_epochs, "bootstrap": args.bootstrap,
                         "bootstrap_seed": args.bootstrap_seed, "jobs": args.jobs, "quick": args.quick},
            "pairing": pairing, "per_run": per_run, "bootstrap": boot,
            "truth": {k: v for k, v in truth.items() if k != "scores"}, "truth_scores": truth["scores"],
            "runs": {f"{arm}/{seed}": {k: v for k, v in r.items() if k != "proposals"}
                     for (arm, seed), r in runs.items()}}
        text = markdown(report)
        report["markdown"] = text
        print(text)
        if args.out is not None:
            write_text_atomically(args.out, json.dumps(report, indent=1, allow_nan=True))
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def cli() -> int:
    """:func:`main`, with a bad option or name (the library's ``ConfigError``) reported as exit status 2."""
    try:
        return main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
