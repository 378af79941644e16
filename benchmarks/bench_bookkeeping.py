#!/usr/bin/env python
"""Does the per-trial bookkeeping stay flat as a study grows?

After each trial a search runs its after-trial work: :class:`~wpl_nas.callbacks.RetentionCallback`
(study attributes, dashboard notes, ``retention.json``, ``retention.csv``),
:class:`~wpl_nas.callbacks.AnatomyCallback` (CKA of the pool members, the anatomy record) and
:class:`~wpl_nas.callbacks.TensorBoardCallback` (scalars, the HPARAMS row, the forgetting heatmap),
beside the checkpoint it writes inside the trial. This script builds a synthetic study of N
finished trials (a SQLite study with N trials, a retained pool of the default size that re-scored
its members after every one of them, anatomy snapshots of the members, the run folder's files as a
search leaves them), then times that work for the next few trials, no training: the bookkeeping
alone. Side by side in one run for each N; the figure that matters is the ratio of N = 1,000 to
N = 10 (1.0: flat).

Usage::

    python benchmarks/bench_bookkeeping.py                    # N = 10, 100, 1000 (~3 min on 2 cores)
    python benchmarks/bench_bookkeeping.py --sizes 10 100 --trials 3
    python benchmarks/bench_bookkeeping.py --figures-every 10 # the heatmap every 10 trials
    python benchmarks/bench_bookkeeping.py --quick            # smoke run (what the test runs)
    python benchmarks/bench_bookkeeping.py --sizes 10 --journal delete wal  # SQLite's journal, side by side

``--journal``: the study file's SQLite journal during the timed trials, ``wal`` as a search keeps it
(:func:`wpl_nas.storage.sqlite_write_ahead`) or ``delete``, SQLite's default rollback journal (as
searches kept it before); given both, each size is timed in each, one after the other.

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name

from wpl_nas.assembly import build_supernet
from wpl_nas.callbacks import AnatomyCallback, RetentionCallback, TensorBoardCallback
from wpl_nas.data import load_dataset
from wpl_nas.evaluation import RESCORES_ATTR, RetainedPool
from wpl_nas.evaluation.anatomy import stage_features
from wpl_nas.run_folder import RunFolder
from wpl_nas.spaces import Architecture, load_space
from wpl_nas.storage import open_storage, sqlite_write_ahead

PARTS = ("retention", "anatomy", "tensorboard", "checkpoint")


class Study:
    """A synthetic search of ``size`` finished trials in ``folder``, ready for its next trial."""

    def __init__(self, folder: Path, size: int, *, space: Any, supernet: Any, probe: torch.Tensor,
                 figures_every: int, journal: str = "wal") -> None:
        self.rng = random.Random(size)
        self.space, self.supernet = space, supernet
        self.folder = RunFolder(folder)
        self.folder.path.mkdir(parents=True)
        self.pool = RetainedPool(best=5, recent=3)
        self.finished: dict[int, tuple[str, Any]] = {}
        storage = open_storage(f"sqlite:///{folder / 'study.db'}")
        self.study = optuna.create_study(storage=storage, direction="maximize")
        self.journal = contextlib.ExitStack()  # closed by close()
        if journal == "wal":  # as a search holds its study while it runs
            self.journal.enter_context(sqlite_write_ahead(storage))
        self.distributions = {k: CategoricalDistribution(list(v)) for k, v in space.choices.items()}
        retention = RetentionCallback(self.pool, self.finished, self.folder, chance=0.1)
        anatomy = AnatomyCallback(supernet, self.pool, self.finished, self.folder, probe=probe,
                                  device=torch.device("cpu"))
        tb_options = {"figures_every": figures_every} if figures_every != 1 else {}
        tensorboard = TensorBoardCallback(folder / "tb", space=space, **tb_options)
        self.callbacks = {"retention": retention, "anatomy": anatomy, "tensorboard": tensorboard}
        self.tensorboard = tensorboard
        frozen = [self._trial(n) for n in range(size)]
        self.study.add_trials(frozen)
        self.folder.anatomy_dir.mkdir()
        for member in self.pool.members():  # as the anatomy callback left them when each joined
            arch = Architecture.parse(self.pool.entries[member].arch)
            torch.save({"arch": str(arch), "features": stage_features(supernet, arch, probe),
                        "weights": {n: p.detach().clone() for n, p in supernet.parameters_of(arch).items()}},
                       self.folder.snapshot_path(member))
        # The anatomy record of N trials (each member compared after every later trial).
        cka = {stage: 0.9 for stage in stage_features(supernet, arch, probe)}
        rows = "".join(json.dumps({"after_trial": n, "cka": {str(m): cka for m in range(max(0, n - 7), n)}}) + "\n"
                       for n in range(1, size - 1))
        (folder / "anatomy.jsonl").write_text(rows)
        # The state the last trial's after-trial work left (one call each; the earlier trials' records
        # are what the pool holds).
        last = self.study.get_trials(deepcopy=False)[-1]
        self.after_trial(last)

    def _trial(self, number: int) -> optuna.trial.FrozenTrial:
        """Trial ``number`` trained: its candidate pooled, the pool re-scored, the trial recorded."""
        arch = self.space.sample(self.rng)
        score = self.rng.uniform(0.3, 0.9)
        self.pool.add(number, str(arch), score)
        rescores = {m: self.rng.uniform(0.3, 0.9) for m in self.pool.members()}
        self.pool.record(number, rescores)
        self.finished[number] = ("COMPLETE", score)
        return optuna.trial.create_trial(
            params=dict(zip(self.space.choices, (arch[k] for k in self.space.choices), strict=True)),
            distributions=self.distributions, value=score,
            user_attrs={"arch": str(arch), "score_at_training": score, "train_loss": 1.0, "params": 1000,
                        "position": number, RESCORES_ATTR: {str(m): v for m, v in rescores.items()}})

    def close(self) -> None:
        self.tensorboard.close()
        self.journal.close()

    def checkpoint(self) -> None:
        self.folder.save_checkpoint({"supernet": self.supernet.state_dict(), "pool": self.pool.state_dict(),
                                     "finished": dict(self.finished)})

    def after_trial(self, frozen: optuna.trial.FrozenTrial) -> dict[str, float]:
        seconds = {}
        for name, callback in self.callbacks.items():
            start = time.perf_counter()
            callback(self.study, frozen)
            seconds[name] = time.perf_counter() - start
        return seconds

    def next_trial(self) -> dict[str, float]:
        """One more trial: pooled and re-scored (untimed), its checkpoint and after-trial work (timed)."""
        number = len(self.finished)
        self.study.add_trial(self._trial(number))
        start = time.perf_counter()
        self.checkpoint()
        seconds = {"checkpoint": time.perf_counter() - start}
        frozen = self.study.get_trials(deepcopy=False)[-1]
        return seconds | self.after_trial(frozen)


def measure(sizes: list[int], *, trials: int, figures_every: int = 1, space_name: str = "mnist1d",
            journal: str = "wal") -> dict[int, dict[str, float]]:
    """The median seconds of each part of the bookkeeping (and their total) per trial, for a synthetic
    study of each size in ``sizes``, ``trials`` trials timed after one untimed."""
    space = load_space(space_name)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset("mnist1d", data_dir=Path(tmp) / "data")
        supernet = build_supernet(space, data, seed=0)
        probe = data.val.tensors[0][:256]  # type: ignore[attr-defined]
        rows: dict[int, dict[str, float]] = {}
        for size in sizes:
            print(f"N = {size}: building ...", file=sys.stderr)
            start = time.perf_counter()
            study = Study(Path(tmp) / f"n{size}-{journal}", size, space=space, supernet=supernet, probe=probe,
                          figures_every=figures_every, journal=journal)
            print(f"N = {size}: built in {time.perf_counter() - start:.0f} s; timing", file=sys.stderr)
            study.next_trial()  # untimed: the first call of a process may set things up
            runs = [study.next_trial() for _ in range(trials)]
            rows[size] = {part: statistics.median(r[part] for r in runs) for part in PARTS}
            rows[size]["total"] = statistics.median(sum(r.values()) for r in runs)
            study.close()
    return rows


def table(rows: dict[int, dict[str, float]]) -> str:
    """``rows`` (:func:`measure`) as a Markdown table in ms, and the ratio of the largest N to the smallest."""
    lines = ["| N | " + " | ".join(PARTS) + " | total |", "|---:|" + "---:|" * (len(PARTS) + 1)]
    lines += [f"| {size:,} | " + " | ".join(f"{1000 * row[p]:.1f}" for p in (*PARTS, "total")) + " |"
              for size, row in rows.items()]
    lo, hi = min(rows), max(rows)
    lines += ["", f"ratio N = {hi:,} : N = {lo:,}: " + ", ".join(
        f"{p} {rows[hi][p] / rows[lo][p]:.2f}×" for p in (*PARTS, "total"))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="study sizes N")
    parser.add_argument("--trials", type=int, default=5, help="trials timed per size (after one untimed)")
    parser.add_argument("--figures-every", type=int, default=1, help="the heatmap every K trials")
    parser.add_argument("--space", default="mnist1d")
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 5 and 20, two trials each")
    parser.add_argument("--journal", nargs="+", choices=("wal", "delete"), default=["wal"],
                        help="the study's SQLite journal while timed: wal (as a search keeps it), delete, or both")
    parser.add_argument("--json", type=Path, help="write every figure (seconds) to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.trials = [5, 20], 2
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    by_journal = {journal: measure(args.sizes, trials=args.trials, figures_every=args.figures_every,
                                   space_name=args.space, journal=journal) for journal in args.journal}
    for journal, rows in by_journal.items():
        print(f"per-trial bookkeeping, median of {args.trials} trials, ms ({cpu_name()}, 1 thread; "
              f"figures every {args.figures_every}; SQLite journal {journal})\n")
        print(table(rows) + "\n")
    if len(by_journal) == 2:
        wal, delete = by_journal["wal"], by_journal["delete"]
        print("wal : delete, per size: " + "; ".join(
            f"N = {n:,}: total {wal[n]['total'] / delete[n]['total']:.2f}×, retention "
            f"{wal[n]['retention'] / delete[n]['retention']:.2f}×" for n in args.sizes))
    if args.json:
        first = by_journal[args.journal[0]]
        args.json.write_text(json.dumps({
            "sizes": {str(n): row for n, row in first.items()}, "journal": args.journal[0],
            "journals": {j: {str(n): row for n, row in rows.items()} for j, rows in by_journal.items()},
            "figures_every": args.figures_every, "trials": args.trials}, indent=1))


if __name__ == "__main__":
    main()
