#!/usr/bin/env python
"""How long does ``wpl-nas`` take to answer ``--help`` or a mistyped flag? Each command timed in a
fresh process, side by side with ``python -c "import click"`` (the floor: the CLI's own library).

The commands (each ``python -m wpl_nas ...``, which is what the ``wpl-nas`` script runs):

* **import click**: ``python -c "import click"``, the baseline of every ratio;
* **--help**: ``wpl-nas --help``;
* **search --help**: ``wpl-nas search --help``;
* **usage error**: ``wpl-nas search --trials abc`` (exit code 2: not an integer);
* **import wpl_nas**: ``python -c "import wpl_nas"`` (the public names load on first use);
* optionally (``--slow``) the commands that need the strategy registry or the search itself, and
  so torch: ``wpl-nas strategies``, ``search --strategy nieve`` and ``search --sampler nope`` (both
  exit code 2, in an empty runs folder).

The runs go in interleaved rounds: each round runs every command once, the order rotating from
round to round, so that what else happens on the machine hits every command alike. Reported per
command: the median wall time, the ratio of medians to ``import click`` with a 95% interval (a
bootstrap over rounds), the exit code, and which of torch, optuna, matplotlib, tensorboard and
networkx the process imported (from ``-X importtime``; tests/integration/test_startup.py asserts
the fast commands import none).

Usage::

    python benchmarks/bench_startup.py                 # 15 rounds, ~1 min on 2 cores
    python benchmarks/bench_startup.py --slow          # also the commands that load torch, ~5 min
    python benchmarks/bench_startup.py --quick         # smoke run (what the test runs)

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import cpu_name

ROOT = Path(__file__).resolve().parents[1]
#: The modules a fast answer must not import (seconds between them).
HEAVY = ("torch", "optuna", "matplotlib", "tensorboard", "networkx")
BASELINE = "import click"


def commands(runs: Path) -> dict[str, tuple[list[str], bool]]:
    """``{label: (arguments after python -X importtime, slow)}``."""
    cli = ["-m", "wpl_nas"]
    return {
        BASELINE: (["-c", "import click"], False),
        "wpl-nas --help": ([*cli, "--help"], False),
        "wpl-nas search --help": ([*cli, "search", "--help"], False),
        "wpl-nas search --trials abc": ([*cli, "search", "--trials", "abc"], False),
        "import wpl_nas": (["-c", "import wpl_nas"], False),
        "wpl-nas strategies": ([*cli, "strategies"], True),
        "wpl-nas search --strategy nieve": ([*cli, "search", "--strategy", "nieve", "--runs-dir", str(runs)], True),
        "wpl-nas search --sampler nope": ([*cli, "search", "--sampler", "nope", "--runs-dir", str(runs)], True),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_once(arguments: list[str]) -> dict[str, Any]:
    """One fresh process: its wall seconds, exit code and the heavy modules it imported.

    ``-X importtime`` writes a line per module to stderr; it adds a little to every command alike
    (the baseline too), and it is what tells which modules were loaded without changing the command.
    """
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", *arguments], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    wall = time.perf_counter() - start
    loaded = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\w+)$", proc.stderr, flags=re.MULTILINE))
    return {"wall_s": wall, "exit_code": proc.returncode, "heavy": [m for m in HEAVY if m in loaded]}


def interval(ratios: Sequence[tuple[float, float]], *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval over rounds of the ratio of medians (rounds are (command, baseline) pairs)."""
    rng = random.Random(seed)
    values = []
    for _ in range(draws):
        sample = [rng.choice(ratios) for _ in ratios]
        values.append(statistics.median(a for a, _ in sample) / statistics.median(b for _, b in sample))
    values.sort()
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


def summarise(runs: list[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    base = {r["round"]: r["wall_s"] for r in runs if r["command"] == BASELINE}
    base_median = statistics.median(base.values())
    rows = []
    for label in labels:
        mine = [r for r in runs if r["command"] == label]
        median = statistics.median(r["wall_s"] for r in mine)
        low, high = interval([(r["wall_s"], base[r["round"]]) for r in mine])
        rows.append({"command": label, "runs": len(mine), "median_s": median, "ratio": median / base_median,
                     "ratio_low": low, "ratio_high": high, "exit_codes": sorted({r["exit_code"] for r in mine}),
                     "heavy": sorted({m for r in mine for m in r["heavy"]}, key=HEAVY.index)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| command | wall ms (median) | × import click (95% CI) | exit | heavy modules imported |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = "1" if r["command"] == BASELINE else f"{r['ratio']:.1f} ({r['ratio_low']:.1f}–{r['ratio_high']:.1f})"
        heavy = ", ".join(r["heavy"]) or "none"
        lines.append(f"| `{r['command']}` | {1000 * r['median_s']:.0f} | {ratio} | "
                     f"{','.join(map(str, r['exit_codes']))} | {heavy} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="Interleaved rounds (each: every command once). [15]")
    parser.add_argument("--slow", action="store_true",
                        help="Also time the commands that load torch (strategies, unknown strategy and sampler).")
    parser.add_argument("--quick", action="store_true", help="Two rounds (a smoke run).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu_name(), "cores": cores(),
           "load_average_at_start": load_average()}
    print(f"{env['cores']} cores, {env['cpu']}; load average {env['load_average_at_start']}", file=sys.stderr)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
        chosen = {label: arguments for label, (arguments, slow) in commands(Path(work) / "runs").items()
                  if args.slow or not slow}
        labels = list(chosen)
        for label in labels:  # warm-up, untimed: the first run reads the files from disk
            run_once(chosen[label])
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            for label in order:
                row = {"round": r, "command": label, **run_once(chosen[label])}
                runs.append(row)
                print(f"round {r} {label:<32} {1000 * row['wall_s']:7.0f} ms  exit {row['exit_code']}",
                      file=sys.stderr)
    rows = summarise(runs, labels)
    env["load_average_at_end"] = load_average()
    print(f"# bench_startup: {args.rounds} round(s), {env['cores']} cores; load average "
          f"{env['load_average_at_start']} -> {env['load_average_at_end']}; {time.perf_counter() - started:.0f} s\n")
    print(table(rows))
    if args.json:
        report = {"environment": {**env, "rounds": args.rounds, "slow": args.slow, "quick": args.quick},
                  "rows": rows, "runs": runs}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
