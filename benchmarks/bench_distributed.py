#!/usr/bin/env python
"""A search in 2 data-parallel processes (torchrun, gloo, CPU) against the same search in one process,
same global batch: wall time and equality of results, side by side in one run.

Each run is the same ``wpl-nas search`` (same seed, options and global batch size) in a subprocess:

* **1x2**: one process, ``--threads 2`` (both cores for one process);
* **1x1**: one process, ``--threads 1`` (the default);
* **2x1**: ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m wpl_nas search ...``,
  ``--threads 1``: two processes of one thread, each training on half of every batch, gradients
  summed by gloo.

On a 2-core machine **2x1 against 1x2** is the honest comparison (the same two cores), and 1x1
shows what the second core buys either way. The settings run in interleaved rounds (the order
rotating), so what else runs on the machine hits each alike; reported: the median wall time of
the whole command, its ratio to 1x2's, and how far each run's results are from 1x1's: the same
candidates, the largest difference of a trial's score (in evaluation samples) and of a supernet
weight in the final checkpoint (another thread count moves them too: the sums are taken in
another order, and training amplifies the last digits).

A second part measures where the time goes besides training (``_rank_times.py``: timers around
the trainer's and the objective's methods), against the training epochs' (``run_epoch``): the
scores of the candidate in training after each epoch (divided among the ranks by evaluation
batches), the retained pool's re-scores (divided by candidates) and consolidation (repeated whole
on every rank); in a one-process search (1x1) and on rank 0 of the 2x1 search (median over the
rounds; wall time, so a rank's waits for the other count). ``--baseline SRC`` times another
version's rank 0 the same way in the same interleaved rounds (SRC: its source tree, e.g. a git
worktree of an earlier commit).

Usage::

    python benchmarks/bench_distributed.py                   # default space, 4 trials, 2 rounds, ~8 min on 2 cores
    python benchmarks/bench_distributed.py --rounds 3 --trials 6
    python benchmarks/bench_distributed.py --only share --baseline ../before   # rank 0's shares, this vs before
    python benchmarks/bench_distributed.py --quick           # smoke run (what the test runs)

The tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _rank_times
from _common import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parent / "spaces" / "tiny1d.yaml"
SETTINGS = ("1x2", "1x1", "2x1")


def search_args(args: argparse.Namespace, runs: Path, threads: int) -> list[str]:
    return ["search", "--space", args.space, "--trials", str(args.trials), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--train-samples", str(args.train_samples),
            "--eval-samples", str(args.eval_samples), "--seed", str(args.seed), "--device", "cpu",
            "--threads", str(threads), "--runs-dir", str(runs), "--study-name", "s", "--no-progress",
            "--strategy", args.strategy]


def run(args: argparse.Namespace, setting: str, work: Path) -> dict[str, Any]:
    runs = work / setting
    threads = 2 if setting == "1x2" else 1
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
              "wpl_nas"] if setting == "2x1" else [sys.executable, "-m", "wpl_nas"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run([*prefix, *search_args(args, runs, threads)], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{done.stderr[-3000:]}")
    return {"setting": setting, "seconds": seconds, "run": runs / "s"}


def results(run_dir: Path) -> tuple[list[str], list[float], dict[str, Any]]:
    import optuna
    import torch

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["supernet"]
    return [t.user_attrs["arch"] for t in trials], [float(t.value) for t in trials], state


def compare(reference: Path, other: Path, eval_samples: int) -> dict[str, Any]:
    archs_a, values_a, state_a = results(reference)
    archs_b, values_b, state_b = results(other)
    score = max((abs(a - b) for a, b in zip(values_a, values_b, strict=True)), default=0.0)
    weight = max(float((state_a[k] - state_b[k]).abs().max()) for k in state_a
                 if state_a[k].is_floating_point() and state_a[k].numel())
    return {"same_candidates": archs_a == archs_b, "score_diff_samples": round(score * eval_samples, 3),
            "max_weight_diff": weight}


def evaluation_samples(args: argparse.Namespace) -> int:
    """How many samples every score is taken on: ``--eval-samples``, or the whole validation split."""
    if args.eval_samples:
        return int(args.eval_samples)
    import wpl_nas

    config = wpl_nas.SearchConfig(train_samples=args.train_samples, seed=args.seed)
    data = wpl_nas.load_dataset(config.dataset, data_dir=config.data_dir, val_fraction=config.val_fraction,
                                seed=config.seed, train_samples=config.train_samples)
    return len(data.val)  # type: ignore[arg-type]


def undivided_share(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Seconds of each kind of work (:data:`_rank_times.KINDS`) in a one-process search."""
    import wpl_nas

    totals = _rank_times.install()
    config = wpl_nas.SearchConfig(space=args.space, trials=args.trials, epochs=args.epochs,
                                  batch_size=args.batch_size, train_samples=args.train_samples,
                                  eval_samples=args.eval_samples, seed=args.seed, device="cpu", threads=1,
                                  runs_dir=str(work / "share"), study_name="s", strategy=args.strategy)
    wpl_nas.run_search(config, progress=False, command=["bench"])
    return totals


def rank0_share(args: argparse.Namespace, work: Path, src: Path) -> dict[str, float]:
    """Seconds of each kind of work on rank 0 of the 2x1 search, with wpl-nas imported from ``src``."""
    out = work / "rank0.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(Path(__file__).resolve().parent / "_rank_times.py"), str(src), str(out),
               *search_args(args, work / "runs", 1)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"2x1 from {src} failed:\n{done.stderr[-3000:]}")
    return {k: float(v) for k, v in json.loads(out.read_text()).items()}


def rank0_rounds(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    """Rank 0's seconds per kind of work under torchrun (2x1), median over the rounds: this version
    and, with ``--baseline``, the other, alternating in interleaved rounds."""
    versions = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in versions}
    for r in range(args.rounds):
        order = list(versions) if r % 2 == 0 else list(versions)[::-1]
        for version in order:
            runs[version].append(rank0_share(args, work / f"rank0-{version}-{r}", versions[version]))
            total = sum(runs[version][-1].values())
            print(f"round {r} rank 0 ({version}): {total:.1f} s in the timed calls", file=sys.stderr)
    return {v: {k: statistics.median(run[k] for run in rs) for k in _rank_times.KINDS} for v, rs in runs.items()}


def print_shares(title: str, columns: dict[str, dict[str, float]]) -> None:
    """A table of seconds per kind of work and their ratio to the training epochs', one column pair each."""
    names = list(columns)
    print(f"\n| {title} | " + " | ".join(f"{n}: s | {n}: vs training" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    labels = {"epoch_scores": "scores after each epoch", "pool_rescores": "pool re-scores",
              "consolidation": "consolidation", "train_epochs": "(training epochs)"}
    for kind in ("epoch_scores", "pool_rescores", "consolidation", "train_epochs"):
        cells = [f"{c[kind]:.2f} | {c[kind] / c['train_epochs']:.2f}x" for c in columns.values()]
        print(f"| {labels[kind]} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="mnist1d", help="space name or YAML [default: mnist1d, the default search]")
    parser.add_argument("--strategy", default="wpl")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch [default: the search's, 64]")
    parser.add_argument("--train-samples", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny space, 1 round, 2 short trials")
    parser.add_argument("--only", choices=("all", "share"), default="all",
                        help="share: only where the time goes (one process, and rank 0 under torchrun)")
    parser.add_argument("--baseline", type=Path,
                        help="the source tree of another wpl-nas version (e.g. a git worktree of an earlier "
                             "commit): its rank 0 is timed too, in the same interleaved rounds")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    if args.quick:
        args.space, args.trials, args.epochs, args.train_samples, args.eval_samples, args.rounds = \
            str(TINY), 2, 1, 300, 256, 1
        args.batch_size = 50
    eval_samples = evaluation_samples(args)
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, load average {load}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        work = Path(tmp)
        times: dict[str, list[float]] = {s: [] for s in SETTINGS}
        last: dict[str, Path] = {}
        for r in range(args.rounds if args.only == "all" else 0):
            order = SETTINGS[r % 3:] + SETTINGS[:r % 3]
            for setting in order:
                out = run(args, setting, work / f"round{r}")
                times[setting].append(out["seconds"])
                last[setting] = out["run"]
                print(f"round {r} {setting}: {out['seconds']:.1f} s", file=sys.stderr)
        for setting in SETTINGS if args.only == "all" else ():
            median = statistics.median(times[setting])
            rows.append({"setting": setting, "seconds": round(median, 2),
                         "ratio_to_1x2": round(median / statistics.median(times["1x2"]), 3),
                         **compare(last["1x1"], last[setting], eval_samples)})
        rank0 = rank0_rounds(args, work)
        share = undivided_share(args, work)
    load_end = [round(x, 2) for x in os.getloadavg()]
    if rows:
        print(f"| setting | wall s (median of {args.rounds}) | vs 1x2 | same candidates | "
              "max score diff (eval samples) | max weight diff vs 1x1 |")
        print("|---|---:|---:|---|---:|---:|")
    for row in rows:
        print(f"| {row['setting']} | {row['seconds']:.1f} | {row['ratio_to_1x2']:.2f}x | {row['same_candidates']} | "
              f"{row['score_diff_samples']:g} | {row['max_weight_diff']:.2e} |")
    print_shares("one process (1x1)", {"1x1": share})
    print_shares(f"rank 0 of 2x1 (median of {args.rounds})", {f"2x1 {v}": t for v, t in rank0.items()})
    print(f"\nload average: {load} at the start, {load_end} at the end", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"results": rows, "undivided": share, "rank0": rank0, "load": [load, load_end],
                                         "options": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
