#!/usr/bin/env python
"""How much more than its training steps does a search cost, and does the per-trial bookkeeping stay flat?

Two measurements in one run:

(a) **search overhead**: the default search (``wpl-nas search``: MNIST-1D, the ``mnist1d`` space,
    WPL, 24 trials of 2 epochs) run as a user runs it, in a fresh process per search, and, side by
    side in interleaved rounds, the variants asked for (``--variants``; by default ``lean``:
    ``--figures-every 10 --anatomy-every 10``, which leave the results as they are). Inside each process the
    search's own methods are timed (exclusive time: a part's time leaves out the parts it calls),
    so the whole process splits into *training steps* (``CandidateTrainer.run_epoch``: forward,
    loss, backward, the strategy's step hooks, clipping, the optimiser step, over every batch) and
    everything else (start-up and imports, set-up, per-epoch validation, consolidation, pool
    re-scoring, checkpoint, the cell drawing, the after-trial callbacks, the final selection).
    The headline is **total / training steps**, in CPU time (``time.process_time``: what other
    processes on a shared machine do is left out) and in wall time. Target: ≤ 1.2×.
(b) **per-trial bookkeeping** at N = 10, 100 and 1,000 finished trials (synthetic state, no
    training: ``bench_bookkeeping.py``'s study). Target: flat (ratio N = 1,000 : N = 10 near 1).

Usage::

    python benchmarks/bench_overhead.py                       # (a) default and lean, 2 rounds each, (b) (~15 min)
    python benchmarks/bench_overhead.py --variants default,1-epoch --rounds 2
    python benchmarks/bench_overhead.py --only search --variants default,lean,fast
    python benchmarks/bench_overhead.py --only search --variants default-8-epochs,fast-8-epochs --trials 12 --rounds 1
    python benchmarks/bench_overhead.py --only search          # (a) only
    python benchmarks/bench_overhead.py --quick                # smoke run (what the test runs)

The tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import cpu_name  # noqa: E402

#: Each variant's flags, added to ``wpl-nas search``'s defaults.
_LEAN = ["--figures-every", "10", "--anatomy-every", "10"]
#: ``fast``: lean, the pool re-scored every 4 trials (and after the last) and no per-epoch scores before the
#: last epoch; measurements only: the candidates, their scores and the final weights stay the default's.
_FAST = [*_LEAN, "--rescore-every", "4", "--no-epoch-scores"]
VARIANTS = {"default": [], "lean": _LEAN, "fast": _FAST, "figures-every-10": ["--figures-every", "10"],
            "1-epoch": ["--epochs", "1"], "default-8-epochs": ["--epochs", "8"],
            "fast-8-epochs": [*_FAST, "--epochs", "8"]}

#: The parts of a search, each the exclusive time of the methods named (module, qualified name).
PARTS: dict[str, list[tuple[str, str]]] = {
    "training steps": [("wpl_nas.training.trainer", "CandidateTrainer.run_epoch")],
    "training: set-up, penalty": [("wpl_nas.training.trainer", "CandidateTrainer.train")],
    "per-epoch validation": [("wpl_nas.training.trainer", "CandidateTrainer.score")],
    "consolidation": [("wpl_nas.training.trainer", "CandidateTrainer.consolidate")],
    "pool re-scoring": [("wpl_nas.objective", "SupernetObjective._update_pool")],
    "checkpoint": [("wpl_nas.objective", "SupernetObjective.save")],
    "cell drawing": [("wpl_nas.objective", "SupernetObjective._upload_cell")],
    "trial: suggest, attributes": [("wpl_nas.objective", "SupernetObjective.__call__")],
    "retention callback": [("wpl_nas.callbacks", "RetentionCallback.__call__")],
    "anatomy callback (CKA)": [("wpl_nas.callbacks", "AnatomyCallback.__call__")],
    "tensorboard callback": [("wpl_nas.callbacks", "TensorBoardCallback.__call__"),
                             ("wpl_nas.callbacks", "TensorBoardCallback.log_final"),
                             ("wpl_nas.callbacks", "TensorBoardCallback.close")],
    "final selection": [("wpl_nas.api", "_Search._final_selection")],
    "set-up: data, supernet, study": [("wpl_nas.api", "_Search.__init__")],
    "search loop: sampler, ask, tell": [("wpl_nas.api", "run_search")],
}
#: A part counted only when called directly from the part named (else it is its caller's time):
#: a score inside training is the per-epoch validation; the pool's and the final selection's
#: scores are theirs.
ONLY_INSIDE = {"per-epoch validation": "training: set-up, penalty"}
START_UP = "start-up: interpreter, imports, CLI"


# --- the child: one search, timed part by part -------------------------------------------------
class _Clock:
    """Exclusive CPU and wall seconds per part: a part's clock stops while a part it calls runs."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.stack: list[tuple[str, float, float]] = []  # (part, cpu, wall) at the moment it (re)started

    def _charge(self) -> None:
        if self.stack:
            part, cpu, wall = self.stack[-1]
            self.cpu[part] = self.cpu.get(part, 0.0) + time.process_time() - cpu
            self.wall[part] = self.wall.get(part, 0.0) + time.perf_counter() - wall

    def wrap(self, part: str, function: Any) -> Any:
        inside = ONLY_INSIDE.get(part)

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if inside is not None and (not self.stack or self.stack[-1][0] != inside):
                return function(*args, **kwargs)
            self._charge()
            self.stack.append((part, time.process_time(), time.perf_counter()))
            try:
                return function(*args, **kwargs)
            finally:
                self._charge()
                self.stack.pop()
                if self.stack:  # the caller's clock runs again
                    self.stack[-1] = (self.stack[-1][0], time.process_time(), time.perf_counter())
        return timed


def _child(out: Path, flags: list[str]) -> None:
    """Run ``wpl-nas search FLAGS`` in this process with every part of :data:`PARTS` timed; write the
    seconds to ``out``."""
    import importlib

    clock = _Clock()
    start_up: dict[str, float] = {}

    def patch(module_name: str, qualname: str, part: str) -> None:
        module = importlib.import_module(module_name)
        owner_name, _, name = qualname.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        wrapped = clock.wrap(part, getattr(owner, name))
        setattr(owner, name, wrapped)
        if not owner_name:  # a function: also where the CLI imports it from
            import wpl_nas.api
            setattr(wpl_nas.api, name, wrapped)

    from wpl_nas.cli import cli
    for part, targets in PARTS.items():
        for module_name, qualname in targets:
            patch(module_name, qualname, part)
    import wpl_nas.api
    search = wpl_nas.api.run_search

    def run_search(*args: Any, **kwargs: Any) -> Any:
        # Everything this process did before the search starts: the interpreter, the imports (the
        # ones patching brought forward included), the command line.
        start_up.update(cpu=time.process_time(), wall=time.perf_counter() - wall_at_start)
        return search(*args, **kwargs)

    wpl_nas.api.run_search = run_search  # type: ignore[assignment]
    try:
        cli.main(args=["search", *flags], prog_name="wpl-nas", standalone_mode=False)
    finally:
        cpu, wall = clock.cpu, clock.wall
        cpu[START_UP], wall[START_UP] = start_up.get("cpu", 0.0), start_up.get("wall", 0.0)
        out.write_text(json.dumps({"cpu": cpu, "wall": wall, "cpu_total": time.process_time()}))


wall_at_start = time.perf_counter()  # the child's clock starts at its first line


# --- the parent: the searches side by side, the bookkeeping ------------------------------------
def _search(work: Path, name: str, flags: list[str], trials: int) -> dict[str, Any]:
    """One search in a fresh process; its parts' seconds, its process's wall time and its trial values."""
    out = work / f"{name}.json"
    runs = work / "runs"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--", "--trials", str(trials),
               "--runs-dir", str(runs), "--study-name", name, "--data-dir", str(work / "data"), "--no-progress",
               *flags]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work, env={**os.environ})
    wall_total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"search {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    figures = json.loads(out.read_text())
    figures["wall_total"] = wall_total
    final = (runs / name / "final.csv")
    figures["final_csv"] = final.read_text() if final.is_file() else ""
    figures["weights"] = _weights_digest(runs / name)
    return figures


def _weights_digest(run_dir: Path) -> str:
    """A digest of the final supernet weights in the run's checkpoint (equal digests: equal weights)."""
    import hashlib

    import torch

    from wpl_nas.run_folder import CHECKPOINT

    path = run_dir / CHECKPOINT
    if not path.is_file():
        return ""
    state = torch.load(path, map_location="cpu", weights_only=True)["supernet"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _share(figures: dict[str, Any], clock: str) -> dict[str, float]:
    """Seconds per part, with the rest of the process (what no part holds) as its own row."""
    parts = dict(figures[clock])
    total = figures["cpu_total"] if clock == "cpu" else figures["wall_total"]
    parts["rest of the process (exit, untimed)"] = max(total - sum(parts.values()), 0.0)
    parts["total"] = total
    return parts


def search_overhead(variants: list[str], *, rounds: int, trials: int, work: Path) -> dict[str, Any]:
    """(a): ``rounds`` rounds of each variant's search, the order rotating; per variant the median
    seconds of every part and the ratios total / training steps."""
    print("warm-up: one trial (MNIST-1D generated and cached, files in the page cache) ...", file=sys.stderr)
    _search(work, "warmup", [], 1)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for variant in order:
            print(f"round {r + 1}/{rounds}: {variant} ...", file=sys.stderr)
            runs[variant].append(_search(work, f"{variant}-{r}", VARIANTS[variant], trials))
    result: dict[str, Any] = {}
    for variant, figures in runs.items():
        row: dict[str, Any] = {}
        for clock in ("cpu", "wall"):
            shares = [_share(f, clock) for f in figures]
            row[clock] = {part: statistics.median(s.get(part, 0.0) for s in shares) for part in shares[0]}
            row[f"ratio_{clock}"] = statistics.median(s["total"] / s["training steps"] for s in shares)
        row["final_csv_equal"] = len({f["final_csv"] for f in figures}) == 1
        row["final_csv"] = figures[0]["final_csv"]
        row["weights_equal"] = len({f["weights"] for f in figures}) == 1
        row["weights"] = figures[0]["weights"]
        result[variant] = row
    return result


def _search_table(result: dict[str, Any], trials: int) -> str:
    variants = list(result)
    head = "| part | " + " | ".join(f"{v}: CPU s | share | ms/trial" for v in variants) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(variants)]
    first = result[variants[0]]["cpu"]
    parts = sorted((p for p in first if p != "total"), key=lambda p: -first[p])
    parts.remove("training steps")
    for part in ["training steps", *parts, "total"]:
        cells = []
        for v in variants:
            cpu = result[v]["cpu"]
            value = cpu.get(part, 0.0)
            cells.append(f"{value:.2f} | {100 * value / cpu['total']:.1f}% | {1000 * value / trials:.0f}")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| variant | total / training steps (CPU) | total / training steps (wall) | target | met |")
    lines.append("|---|---:|---:|---|---|")
    for v in variants:
        ratio = result[v]["ratio_cpu"]
        lines.append(f"| {v} | {ratio:.2f}× | {result[v]['ratio_wall']:.2f}× | ≤ 1.20× | "
                     f"{'yes' if ratio <= 1.2 else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(Path(argv[1]), argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="default,lean",
                        help=f"comma-separated, side by side: {', '.join(VARIANTS)} (lean: the heatmap and the "
                             "anatomy every 10 trials) [default: default,lean]")
    parser.add_argument("--rounds", type=int, default=2, help="searches per variant, interleaved")
    parser.add_argument("--trials", type=int, default=24, help="trials per search (the default search's 24)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="bookkeeping: study sizes N")
    parser.add_argument("--bookkeeping-trials", type=int, default=5, help="bookkeeping: trials timed per size")
    parser.add_argument("--only", choices=("search", "bookkeeping"), help="run one of the two measurements")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2-trial searches, N = 5 and 20")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.rounds, args.trials, args.sizes, args.bookkeeping_trials = 1, 2, [5, 20], 2
    print(f"{cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start", file=sys.stderr)
    out: dict[str, Any] = {"cpu": cpu_name(), "load_start": os.getloadavg()[0]}
    if args.only != "bookkeeping":
        with tempfile.TemporaryDirectory() as tmp:
            result = search_overhead(variants, rounds=args.rounds, trials=args.trials, work=Path(tmp))
        print(f"## (a) search overhead: {args.trials} trials, median of {args.rounds} search(es) per variant "
              f"({cpu_name()})\n")
        print(_search_table(result, args.trials))
        # Every variant leaves the results as they are: the same candidates, scores and final re-scores.
        finals = {r["final_csv"] for r in result.values()}
        same = all(r["final_csv_equal"] for r in result.values()) and len(finals) == 1
        print(f"\nsame final.csv in every search: {'yes' if same else 'NO'}")
        weights = {r["weights"] for r in result.values()}
        same_weights = all(r["weights_equal"] for r in result.values()) and len(weights) == 1
        print(f"same final supernet weights (checkpoint) in every search: {'yes' if same_weights else 'NO'}")
        out["search"] = {v: {k: r[k] for k in ("cpu", "wall", "ratio_cpu", "ratio_wall", "final_csv_equal",
                                               "weights_equal")}
                         for v, r in result.items()}
        out["same_final_csv"] = same
        out["same_weights"] = same_weights
        out["trials"] = args.trials
    if args.only != "search":
        import optuna
        import torch
        from bench_bookkeeping import measure, table
        torch.set_num_threads(1)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rows = measure(args.sizes, trials=args.bookkeeping_trials)
        print(f"\n## (b) per-trial bookkeeping, median of {args.bookkeeping_trials} trials, ms\n")
        print(table(rows))
        out["bookkeeping"] = {str(n): row for n, row in rows.items()}
    out["load_end"] = os.getloadavg()[0]
    print(f"\nload average {out['load_start']:.1f} at the start, {out['load_end']:.1f} at the end", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
