#!/usr/bin/env python
"""Forgetting in a recurrent cell search: WPL against naive weight sharing, seed by seed, in perplexity.

Runs ``wpl-nas search`` twice per seed on the same small ENAS recurrent cell space (6 nodes, 4
activations, 32 units) over a synthetic corpus in the Penn Treebank layout (sentences of a small
seeded grammar, written to a temporary folder): once with ``naive`` and once with ``wpl``, same
seed, so the same candidates in the same order with the same batches. Per run it reports the
best validation perplexity found, and the retained pool after the last trial: its mean
perplexity, how much the members' perplexity rose since their own training (forgetting, mean
and max) and Kendall's τ between their perplexities at training and now.

Usage::

    python benchmarks/bench_language.py                  # 2 seeds x 16 trials, about 4 min on 2 cores
    python benchmarks/bench_language.py --seeds 5 --trials 24
    python benchmarks/bench_language.py --quick          # smoke run (what the test runs)

The table goes to stdout, progress to stderr; ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step.py, next to this file

from bench_step import machine

import wpl_nas

SPACE = {"kind": "rnn", "name": "bench-rnn", "model": {"embedding": 32, "hidden": 32},
         "cell": {"nodes": 6, "activations": ["tanh", "relu", "identity", "sigmoid"]}}
STRATEGIES = ("naive", "wpl")


def write_corpus(folder: Path, *, sentences: int) -> None:
    """``folder/ptb/{train,valid,test}.txt``: sentences of a small grammar (seeded, so always the same)."""
    rng = random.Random(0)

    def sentence() -> str:
        return (f"the {rng.choice(['big', 'small', 'old'])} {rng.choice(['cat', 'dog', 'bird', 'fox'])} "
                f"{rng.choice(['sat', 'ran', 'slept'])} on a {rng.choice(['mat', 'log', 'rug', 'box'])}")

    (folder / "ptb").mkdir(parents=True)
    for name, n in (("train.txt", sentences), ("valid.txt", sentences // 7), ("test.txt", sentences // 7)):
        (folder / "ptb" / name).write_text("\n".join(sentence() for _ in range(n)) + "\n")


def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    space_file = root / "space.yaml"
    space_file.write_text(json.dumps(SPACE))
    rows = []
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            config = wpl_nas.SearchConfig(
                space=str(space_file), dataset="ptb", data_dir=str(root), strategy=strategy,
                runs_dir=str(root / "runs"), study_name=f"{strategy}-{seed}", trials=args.trials, epochs=1,
                batch_size=32, lr=1.0, grad_clip=0.25, device="cpu", seed=seed, threads=args.threads)
            result = wpl_nas.run_search(config, progress=False)
            pool = result.pool
            row = {"seed": seed, "strategy": strategy, "best": result.best_score, "pool_mean": pool["retained_mean"],
                   "forgetting_mean": pool["forgetting_mean"], "forgetting_max": pool["forgetting_max"],
                   "rank_tau": pool["rank_tau"]}
            rows.append(row)
            print(f"  seed {seed} {strategy:<6} best {row['best']:.3f}  forgetting {row['forgetting_mean']:+.3f}",
                  file=sys.stderr, flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| seed | strategy | best perplexity | pool mean perplexity | forgetting mean | forgetting max | τ |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['strategy']} | {r['best']:.3f} | {r['pool_mean']:.3f} | {r['forgetting_mean']:+.3f} "
              f"| {r['forgetting_max']:+.3f} | {r['rank_tau']:+.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=16, help="candidates per search")
    parser.add_argument("--sentences", type=int, default=1500, help="sentences in train.txt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 trials, a small corpus")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.sentences = 1, 3, 300
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(Path(tmp), sentences=args.sentences)
        rows = run(args, Path(tmp))
    env = {**machine(wpl_nas.resolve_device("cpu")), "seconds": round(time.perf_counter() - start, 1),
           "seeds": args.seeds, "trials": args.trials, "sentences": args.sentences}
    print(f"## Forgetting in perplexity, naive vs WPL ({env['seconds']} s; {args.seeds} seed(s) x {args.trials} "
          f"trials; {args.sentences} training sentences)\n")
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
