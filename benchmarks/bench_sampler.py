#!/usr/bin/env python
"""Does the forgetting-aware sampler help? ``forgetting-aware`` against its inner sampler ``tpe``.

Both samplers drive the same search (``wpl_nas.run_search``: the default ``mnist1d`` space and
data, WPL, the same trial budget, epochs and seeds); per seed and sampler:

* **retained**: the pool's mean latest re-score at the end of the search, and its mean and max
  forgetting (score at training − latest re-score);
* **rank τ**: Kendall's τ between every pooled candidate's score at training and its latest
  re-score (1: the supernet still ranks its candidates as it did when they were trained);
* **stand-alone**: the architecture the search ranks best, trained from scratch on its own
  (``wpl_nas.fidelity.train_standalone``: a fresh network, ``--standalone-epochs`` epochs, plain
  SGD) and scored on the validation split;
  the search's own score for it is shown beside it;
* **params**: mean parameters on the path of the candidates each sampler proposed (the sampler's
  harm measure is blind to quality, so a drift towards parameter-free cells would show here).

Usage::

    python benchmarks/bench_sampler.py                   # 24 trials x 3 seeds x 2 samplers (~10 min on 2 cores)
    python benchmarks/bench_sampler.py --trials 48 --seeds 5 --strategy naive
    python benchmarks/bench_sampler.py --quick           # smoke run (what the test runs)

The table goes to stdout, progress to stderr; each search's run folder is kept under ``--runs-dir``
(default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step.py, next to this file

from _common import mean_std
from bench_step import machine

import wpl_nas
from wpl_nas.data import load_dataset
from wpl_nas.evaluation import kendall_tau, retention_matrix
from wpl_nas.fidelity import train_standalone

SAMPLERS = ("tpe", "forgetting-aware")
METRICS = ("retained_mean", "forgetting_mean", "forgetting_max", "rank_tau", "best_supernet", "best_standalone",
           "mean_params")


def rank_tau(study: optuna.Study) -> float:
    """Kendall's τ between each pooled candidate's score at training and its latest re-score."""
    retention = retention_matrix(study)
    first = [rows[t] for t, rows in retention.items()]
    latest = [rows[max(rows)] for rows in retention.values()]
    return kendall_tau(first, latest)


def one_search(args: argparse.Namespace, sampler: str, seed: int, runs_dir: Path) -> dict[str, Any]:
    config = wpl_nas.SearchConfig(sampler=sampler, seed=seed, trials=args.trials, epochs=args.epochs,
                                  strategy=args.strategy, runs_dir=str(runs_dir), data_dir=args.data_dir,
                                  study_name=f"{sampler}-seed{seed}", threads=args.threads, device="cpu")
    shutil.rmtree(config.run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = wpl_nas.run_search(config, progress=False, command=["benchmarks/bench_sampler.py"])
    seconds = time.perf_counter() - start
    assert result.best_arch is not None, "no trial completed"
    trials = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    row = {"sampler": sampler, "seed": seed, "seconds": seconds, **result.pool, "rank_tau": rank_tau(result.study),
           "best_arch": str(result.best_arch), "best_supernet": result.best_score,
           "best_standalone": train_standalone(config, load_dataset(config.dataset, data_dir=config.data_dir,
                                                                    val_fraction=config.val_fraction, seed=seed),
                                               result.best_arch, epochs=args.standalone_epochs),
           "mean_params": statistics.fmean(t.user_attrs["params"] for t in trials),
           "distinct": len({t.user_attrs["arch"] for t in trials})}
    print(f"  {sampler:16s} seed {seed}: retained {row['retained_mean']:.4f}, forgetting "
          f"{row['forgetting_mean']:+.4f}, tau {row['rank_tau']:+.3f}, best stand-alone "
          f"{row['best_standalone']:.4f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return row



def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| sampler | retained mean | forgetting mean | forgetting max | rank τ | best (supernet) "
             "| best (stand-alone) | mean params | distinct |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sampler in SAMPLERS:
        group = [r for r in rows if r["sampler"] == sampler]
        lines.append("| " + " | ".join([
            sampler, mean_std([r["retained_mean"] for r in group], ".4f"),
            mean_std([r["forgetting_mean"] for r in group], "+.4f"),
            mean_std([r["forgetting_max"] for r in group], "+.4f"),
            mean_std([r["rank_tau"] for r in group], "+.3f"), mean_std([r["best_supernet"] for r in group], ".4f"),
            mean_std([r["best_standalone"] for r in group], ".4f"), mean_std([r["mean_params"] for r in group], ",.0f"),
            mean_std([r["distinct"] for r in group], ".1f")]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategy", default="wpl")
    parser.add_argument("--standalone-epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--runs-dir", type=Path, help="keep the searches' run folders here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 trials of 1 epoch, one seed")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.seeds, args.standalone_epochs = 3, 1, 1, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="bench-sampler-"))
    start = time.perf_counter()
    try:
        rows = [one_search(args, sampler, seed, runs_dir) for seed in range(args.seeds) for sampler in SAMPLERS]
    finally:
        if args.runs_dir is None:
            shutil.rmtree(runs_dir, ignore_errors=True)
    env = machine(torch.device("cpu"))
    print(f"## Forgetting-aware sampler vs TPE ({env['date'][:10]}; torch {env['torch']}; {env['cpu']}; "
          f"{args.threads} thread(s); mnist1d space and data; strategy {args.strategy}; {args.trials} trials x "
          f"{args.epochs} epochs; seeds 0..{args.seeds - 1}; stand-alone {args.standalone_epochs} epochs; "
          f"{time.perf_counter() - start:.0f} s)\n")
    print(markdown(rows))
    print("\nMean ± sample std over seeds. Best architectures: " +
          "; ".join(f"{r['sampler']} seed {r['seed']} `{r['best_arch']}`" for r in rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "arguments": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
