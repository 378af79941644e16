#!/usr/bin/env python
"""How much forgetting each strategy removes, and what it costs the new model: the two-model quality benchmark.

Runs the forgetting lab's ``two-model`` scenario (the WPL paper's experiment: model A trains, then
model B, sharing A's first layers, trains while A is probed) with every strategy on the same seeds,
then compares each strategy with ``naive`` *seed by seed* (same initial weights, same batches):

* **dip removed**: 1 − (A before − A lowest)_strategy / (A before − A lowest)_naive. A's lowest
  accuracy while B trains is where forgetting bites hardest; 1 means no dip at all, 0 as bad as
  naive, negative worse than naive.
* **end drop removed**: the same with A's accuracy at the end of B's training (A often partly
  recovers as B learns features it can use, so this is the gentler figure).
* **B vs naive**: B's final accuracy minus naive's B, in points: the price of the protection.

Target (issue 3), for WPL: ≥ 80% of the dip removed with B within 1 point of naive. The figures
are means over seeds with the sample std; a seed whose naive run did not dip (a dip under
``--min-dip``) is left out of the ratios (the ratio is meaningless there) and counted in the table.

Usage::

    python benchmarks/bench_quality.py                      # 3 shared layers, all strategies, 3 seeds
    python benchmarks/bench_quality.py --shared 1,2,3       # every sharing depth
    python benchmarks/bench_quality.py --strategies naive,wpl,ewc --seeds 5
    python benchmarks/bench_quality.py --quick              # smoke run (what the test runs)

Everything the lab writes (results.md, retention.png, TensorBoard) lands in ``--runs-dir``
(default ``runs/``) under ``bench-quality``; the table here goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step.py, next to this file

from bench_step import machine

from wpl_nas.lab import LabConfig, SeedOutcome, run_lab

BASELINE = "naive"
TARGET = {"strategy": "wpl", "dip_removed": 0.80, "b_points": 1.0}


def _paired(outcomes: Sequence[SeedOutcome], *, min_dip: float) -> list[dict[str, Any]]:
    """One row per (variant, strategy): each seed compared with naive's run of the same seed and variant."""
    naive = {(o.variant, o.seed): o.metrics for o in outcomes if o.strategy == BASELINE}
    groups: dict[tuple[str, str], list[SeedOutcome]] = {}
    for o in outcomes:
        groups.setdefault((o.variant, o.strategy), []).append(o)
    rows = []
    for (variant, strategy), group in groups.items():
        per_seed: dict[str, list[float]] = {k: [] for k in
                                            ("a_before", "a_lowest", "a_after", "b_final", "dip_removed",
                                             "end_removed", "b_points")}
        skipped = 0
        for o in group:
            m, base = o.metrics, naive[(o.variant, o.seed)]
            per_seed["a_before"].append(m["first_before"])
            per_seed["a_lowest"].append(m["first_min"])
            per_seed["a_after"].append(m["first_after"])
            per_seed["b_final"].append(m["last_acc"])
            per_seed["b_points"].append(100.0 * (m["last_acc"] - base["last_acc"]))
            base_dip, base_end = base["first_before"] - base["first_min"], base["first_before"] - base["first_after"]
            if base_dip < min_dip:
                skipped += 1
                continue
            per_seed["dip_removed"].append(1.0 - (m["first_before"] - m["first_min"]) / base_dip)
            if base_end >= min_dip:
                per_seed["end_removed"].append(1.0 - (m["first_before"] - m["first_after"]) / base_end)
        stats = {k: (statistics.fmean(v) if v else math.nan, statistics.stdev(v) if len(v) > 1 else math.nan)
                 for k, v in per_seed.items()}
        rows.append({"variant": variant, "strategy": strategy, "seeds": len(group), "seeds_without_dip": skipped,
                     "params": group[0].params, **{k: {"mean": m, "std": s} for k, (m, s) in stats.items()}})
    return rows


def _fmt(stat: dict[str, float], spec: str, *, percent: bool = False) -> str:
    mean, std = stat["mean"], stat["std"]
    if math.isnan(mean):
        return "n/a"
    scale = 100.0 if percent else 1.0
    text = format(scale * mean, spec) + ("%" if percent else "")
    return text if math.isnan(std) else f"{text} ± {format(scale * std, spec.lstrip('+'))}"


def _verdict(row: dict[str, Any]) -> str:
    if row["strategy"] != TARGET["strategy"]:
        return ""
    if math.isnan(row["dip_removed"]["mean"]):
        return "n/a (naive did not dip)"
    met = (row["dip_removed"]["mean"] >= TARGET["dip_removed"]
           and abs(row["b_points"]["mean"]) <= TARGET["b_points"])
    return "✓" if met else "✗"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| shared | strategy | A before | A lowest | A after | B final | dip removed | end drop removed "
             "| B vs naive (points) | target |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            str(r["params"]["shared"]), r["strategy"], _fmt(r["a_before"], ".3f"), _fmt(r["a_lowest"], ".3f"),
            _fmt(r["a_after"], ".3f"), _fmt(r["b_final"], ".3f"),
            "—" if r["strategy"] == BASELINE else _fmt(r["dip_removed"], ".0f", percent=True),
            "—" if r["strategy"] == BASELINE else _fmt(r["end_removed"], ".0f", percent=True),
            "—" if r["strategy"] == BASELINE else _fmt(r["b_points"], "+.1f"), _verdict(r)]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="all", help="comma-separated, or all (naive is always added)")
    parser.add_argument("--shared", default="3", help="layers of A that B shares, comma-separated in 1..4")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the lab's)")
    parser.add_argument("--min-dip", type=float, default=0.005,
                        help="naive dips smaller than this leave the seed out of the ratios")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: naive and wpl, one seed, 1 epoch on 600 samples (too short for A to dip)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)

    strategies = args.strategies if args.strategies == "all" else ",".join(
        dict.fromkeys([BASELINE, *(s.strip() for s in args.strategies.split(","))]))
    overrides: dict[str, Any] = {"seeds": args.seeds}
    if args.quick:
        strategies = f"{BASELINE},wpl"
        overrides = {"seeds": 1, "epochs": 1, "train_samples": 600, "eval_samples": 200}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = LabConfig(scenario="two-model", strategies=strategies, shared=args.shared, seed=args.seed,
                       name="bench-quality", runs_dir=args.runs_dir, data_dir=args.data_dir, **overrides)
    start = time.perf_counter()
    result = run_lab(config, progress=sys.stderr.isatty(), command=["benchmarks/bench_quality.py", *(argv or [])])
    seconds = time.perf_counter() - start
    rows = _paired(result.outcomes, min_dip=args.min_dip)
    c, env = result.config, machine(torch.device("cpu"))
    print(f"## Two-model quality ({env['date'][:10]}; torch {env['torch']}; {env['cpu']}; {c.threads} thread(s); "
          f"MNIST-1D; shared {c.shared}; {c.epochs} epoch(s) per model; seeds {c.seed_list}; {seconds:.0f} s)\n")
    print(markdown(rows))
    skipped = sum(r["seeds_without_dip"] for r in rows if r["strategy"] == BASELINE)
    print(f"\nMean ± sample std over seeds, each seed paired with naive's run of the same seed. "
          f"Seeds left out of the ratios because naive did not dip: {skipped}. "
          f"Target: {TARGET['strategy']} removes ≥ {TARGET['dip_removed']:.0%} of the dip with B within "
          f"{TARGET['b_points']:g} point of naive. Lab run folder: {result.run_dir}")
    if args.json:
        figures = {"environment": env, "seconds": seconds, "config": c.to_dict(), "rows": rows}
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
