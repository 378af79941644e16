#!/usr/bin/env python
"""Does the default thread policy stall when other processes hold the cores? A small search timed
with each ``--threads`` setting, on a quiet machine and beside CPU-bound processes.

Each run is ``python -m wpl_nas search`` on the tiny 1-D space (``benchmarks/spaces/tiny1d.yaml``)
in a subprocess, with the same seed and options; only the thread setting changes:

* **default**: no ``--threads`` (the default policy, ``wpl_nas.threads``);
* **1**: ``--threads 1``;
* **N**: ``--threads N``, N the CPUs this process may use, with the wait policy wpl-nas sets
  (``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep at once);
* **N-spin**: ``--threads N`` with OpenMP's own waiting (``GOMP_SPINCOUNT=300000``, libgomp's
  default spin before sleeping): what a search did before, when ``--threads`` defaulted to one
  thread per core and nothing set the wait policy.

Two conditions: **quiet** (nothing started by the benchmark; the load average printed says what
else ran) and **hog** (beside ``--hogs`` CPU-bound processes, ``while True: pass``, started by the
benchmark for the duration of the block). The runs go in interleaved rounds: each round runs a
quiet block and a hog block, each block every setting once, the order rotating from round to
round, so that what else happens on the machine hits every setting alike. Reported per condition
and setting: the median wall time of the whole command, its median CPU time (user + system of
the search process: a spinning thread shows here), and the ratio of the median wall time to the
best setting's in that condition (target for the default: ≤ 1.5 beside a hog, near 1 when quiet).

Usage::

    python benchmarks/bench_threads.py                    # 3 rounds, 3 trials per search, ~15 min on 2 cores
    python benchmarks/bench_threads.py --rounds 5 --hogs 2
    python benchmarks/bench_threads.py --quick            # smoke run (what the test runs)

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import cpu_name

#: The tests' tiny 1-D cell space: a trial takes about a second on one thread.
SPACE = Path(__file__).resolve().parent / "spaces" / "tiny1d.yaml"
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "1", "N", "N-spin")
CONDITIONS = ("quiet", "hog")
#: Variables that decide how OpenMP waits: each setting's environment sets them itself.
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: libgomp's spin count when nothing sets a wait policy (its built-in default).
_GOMP_DEFAULT_SPIN = "300000"
HOG = "while True: pass"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def machine() -> dict[str, Any]:
    """What the figures depend on besides the code (without importing torch into this process)."""
    cpu = cpu_name()
    versions = {}
    for package in ("torch", "wpl-nas"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            **versions, "platform": platform.platform(), "cpu": cpu, "cores": cores(),
            "load_average_at_start": load_average()}


def command(args: argparse.Namespace, setting: str, runs: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """The search command and its environment for ``setting``."""
    cmd = [sys.executable, "-m", "wpl_nas", "search", "--space", str(SPACE), "--runs-dir", str(runs),
           "--data-dir", str(args.data_dir), "--study-name", name, "--trials", str(args.trials),
           "--epochs", str(args.epochs), "--device", "cpu", "--no-progress", "--seed", "0",
           "--train-samples", str(args.train_samples), "--eval-samples", str(args.eval_samples)]
    env = {k: v for k, v in os.environ.items() if k not in _WAIT_VARIABLES}
    if setting != "default":
        cmd += ["--threads", "1" if setting == "1" else str(cores())]
    if setting == "N-spin":
        env["GOMP_SPINCOUNT"] = _GOMP_DEFAULT_SPIN
    return cmd, env


def run_search(args: argparse.Namespace, setting: str, work: Path, name: str) -> dict[str, Any]:
    """Run one search; its wall and CPU seconds and the threads it reported."""
    runs = work / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)
    cmd, env = command(args, setting, runs, name)
    log = work / f"{name}.log"
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"search {name} ({setting}) exited with {proc.returncode}:\n{text[-2000:]}")
    found = re.search(r"CPU threads: (\d+) of", text)
    return {"setting": setting, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "threads": int(found.group(1)) if found else None}


def start_hogs(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]


def stop(hogs: Sequence[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def summarise(runs: list[dict[str, Any]], settings: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for condition in CONDITIONS:
        medians = {s: statistics.median(r["wall_s"] for r in runs if r["condition"] == condition and r["setting"] == s)
                   for s in settings}
        best = min(medians, key=lambda s: medians[s])
        for s in settings:
            mine = [r for r in runs if r["condition"] == condition and r["setting"] == s]
            rows.append({"condition": condition, "setting": s, "threads": mine[0]["threads"], "runs": len(mine),
                         "wall_s": medians[s], "cpu_s": statistics.median(r["cpu_s"] for r in mine),
                         "ratio_to_best": medians[s] / medians[best], "best": s == best})
    return rows


def table(rows: list[dict[str, Any]], hogs: int) -> str:
    lines = ["| condition | setting | threads | wall s (median) | CPU s (median) | × best |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        label = r["condition"] if r["condition"] == "quiet" else f"beside {hogs} CPU hog{'s' * (hogs != 1)}"
        ratio = f"**{r['ratio_to_best']:.2f}**" if r["best"] else f"{r['ratio_to_best']:.2f}"
        lines.append(f"| {label} | {r['setting']} | {r['threads']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {ratio} |")
    default = {r["condition"]: r["ratio_to_best"] for r in rows if r["setting"] == "default"}
    if default:
        met = default["hog"] <= 1.5
        lines += ["", f"Default: {default['quiet']:.2f}× the best setting when quiet, {default['hog']:.2f}× beside the "
                      f"hog{'s' * (hogs != 1)} (target ≤ 1.5: {'met' if met else 'NOT met'})."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (each: a quiet and a hog block). [3]")
    parser.add_argument("--trials", type=int, default=3, help="Trials per search. [3]")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs per trial (the search's default). [2]")
    parser.add_argument("--train-samples", type=int, default=0, help="Training samples (0: all, 3200). [0]")
    parser.add_argument("--eval-samples", type=int, default=0, help="Validation samples scored (0: all, 800). [0]")
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes beside the search. [1]")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"Comma-separated subset of {', '.join(SETTINGS)}. [all]")
    parser.add_argument("--data-dir", type=Path, help="MNIST-1D cache (default: inside the work folder).")
    parser.add_argument("--quick", action="store_true",
                        help="One round of 1-trial, 1-epoch searches on 256 samples (a smoke run).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--keep", type=Path, help="Keep the work folder (run folders, logs) here.")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.trials, args.epochs, args.train_samples, args.eval_samples = 1, 1, 1, 256, 200
    settings = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; choose among {', '.join(SETTINGS)}")
    if args.rounds < 1 or args.hogs < 1:
        parser.error("--rounds and --hogs must be >= 1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    args.data_dir = args.data_dir or work / "data"
    env = machine()
    print(f"{env['cores']} cores, {env['cpu']}; torch {env['torch']}; load average {env['load_average_at_start']}",
          file=sys.stderr)

    started = time.perf_counter()
    run_search(args, "1", work, "warm-up")  # the data set is generated and cached once, untimed
    runs: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            order = settings[r % len(settings):] + settings[:r % len(settings)]
            for condition in CONDITIONS:
                hogs = start_hogs(args.hogs) if condition == "hog" else []
                try:
                    time.sleep(0.5 if hogs else 0.0)  # the hogs are running before the search starts
                    for setting in order:
                        row = {"round": r, "condition": condition,
                               **run_search(args, setting, work, f"{condition}-{setting}")}
                        runs.append(row)
                        print(f"round {r} {condition:>5} {setting:>7}: {row['wall_s']:6.1f} s wall, "
                              f"{row['cpu_s']:6.1f} s CPU, {row['threads']} thread(s)", file=sys.stderr)
                finally:
                    stop(hogs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarise(runs, settings)
    env["load_average_at_end"] = load_average()
    print(f"# bench_threads: {args.trials}-trial search of tiny1d ({args.epochs} epoch(s)), {args.rounds} round(s), "
          f"{env['cores']} cores; load average {env['load_average_at_start']} -> {env['load_average_at_end']}; "
          f"{time.perf_counter() - started:.0f} s\n")
    print(table(rows, args.hogs))
    if args.json:
        report = {"environment": {**env, "trials": args.trials, "epochs": args.epochs, "rounds": args.rounds,
                                  "hogs": args.hogs, "train_samples": args.train_samples,
                                  "eval_samples": args.eval_samples, "quick": args.quick},
                  "rows": rows, "runs": runs}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
