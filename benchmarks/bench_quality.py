#!/usr/bin/env python
"""How much forgetting each strategy removes, and what it costs the new model: the two-model quality benchmark.

Runs the forgetting lab's ``two-model`` scenario (the WPL paper's experiment: model A trains, then
model B, sharing A's first layers, trains while A is probed) with every strategy on the same seeds,
then compares each strategy with ``naive`` *seed by seed* (same initial weights, same batches):

* **dip removed**: 1 − Σ(A before − A lowest)_strategy / Σ(A before − A lowest)_naive, sums over
  seeds; A's lowest accuracy while B trains is where forgetting bites hardest. 100% means no
  dip at all, 0% as bad as naive, negative worse than naive. In brackets, the range of the same
  share seed by seed: with small dips a per-seed share swings widely, so the headline weights
  each seed by naive's dip.
* **end drop removed**: the same with A's accuracy at the end of B's training (A often partly
  recovers as B learns features it can use, so this is the gentler figure).
* **B vs naive**: B's final accuracy minus naive's B on the same seed, in points: the price of
  the protection.

Target (issue 3), for WPL: ≥ 80% of the dip removed with B within 1 point of naive. Accuracies
are means ± sample std over seeds. A seed whose naive run dropped less than ``--min-dip`` is
left out of a share (n/a when no seed is left).

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


def _removed(own: Sequence[float], base: Sequence[float], *, min_dip: float) -> dict[str, float]:
    """Share of naive's drop removed, 1 − Σ own drops / Σ naive's drops, and the range of the same
    share seed by seed, over the seeds where naive dropped at least ``min_dip``. The first is the
    per-seed shares' mean weighted by naive's drop, so it lies within their range."""
    kept = [(o, b) for o, b in zip(own, base, strict=True) if b >= min_dip]
    if not kept:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    per_seed = [1.0 - o / b for o, b in kept]
    return {"mean": 1.0 - sum(o for o, _ in kept) / sum(b for _, b in kept),
            "low": min(per_seed), "high": max(per_seed)}


def _paired(outcomes: Sequence[SeedOutcome], *, min_dip: float) -> list[dict[str, Any]]:
    """One row per (variant, strategy), each seed compared with naive's run of the same seed and variant.

    A's *dip* is A before − A lowest (while B trains), its *end drop* A before − A after.
    """
    naive = {(o.variant, o.seed): o.metrics for o in outcomes if o.strategy == BASELINE}
    groups: dict[tuple[str, str], list[SeedOutcome]] = {}
    for o in outcomes:
        groups.setdefault((o.variant, o.strategy), []).append(o)
    rows = []
    for (variant, strategy), group in groups.items():
        own, base = [o.metrics for o in group], [naive[(o.variant, o.seed)] for o in group]

        def stat(values: Sequence[float]) -> dict[str, float]:
            return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else math.nan}

        def drops(metrics: Sequence[dict[str, float]], low: str) -> list[float]:
            return [m["first_before"] - m[low] for m in metrics]

        rows.append({
            "variant": variant, "strategy": strategy, "seeds": len(group), "params": group[0].params,
            "seeds_without_dip": sum(d < min_dip for d in drops(base, "first_min")),
            "a_before": stat([m["first_before"] for m in own]), "a_lowest": stat([m["first_min"] for m in own]),
            "a_after": stat([m["first_after"] for m in own]), "b_final": stat([m["last_acc"] for m in own]),
            "b_points": stat([100.0 * (m["last_acc"] - b["last_acc"]) for m, b in zip(own, base, strict=True)]),
            "dip_removed": _removed(drops(own, "first_min"), drops(base, "first_min"), min_dip=min_dip),
            "end_removed": _removed(drops(own, "first_after"), drops(base, "first_after"), min_dip=min_dip),
        })
    return rows


def _fmt(stat: dict[str, float], spec: str) -> str:
    """``mean ± std`` (std over seeds, when there are several)."""
    if math.isnan(stat["mean"]):
        return "n/a"
    text = format(stat["mean"], spec)
    return text if math.isnan(stat["std"]) else f"{text} ± {format(stat['std'], spec.lstrip('+'))}"


def _share(stat: dict[str, float]) -> str:
    """``88% (−20…100%)``: the share of the mean drop removed, and its range seed by seed."""
    if math.isnan(stat["mean"]):
        return "n/a"
    text = f"{100 * stat['mean']:.0f}%"
    return text if stat["low"] == stat["high"] else f"{text} ({100 * stat['low']:.0f}…{100 * stat['high']:.0f}%)"


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
            "—" if r["strategy"] == BASELINE else _share(r["dip_removed"]),
            "—" if r["strategy"] == BASELINE else _share(r["end_removed"]),
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
    print(f"\nMean ± sample std over seeds, each seed paired with naive's run of the same seed. *Removed*: 1 − "
          f"Σ drops / Σ naive's drops over the seeds, with the range of the same share seed by seed. "
          f"Seeds left out of the ratios because naive did not dip: {skipped}. "
          f"Target: {TARGET['strategy']} removes ≥ {TARGET['dip_removed']:.0%} of the dip with B within "
          f"{TARGET['b_points']:g} point of naive. Lab run folder: {result.run_dir}")
    if args.json:
        figures = {"environment": env, "seconds": seconds, "config": c.to_dict(), "rows": rows}
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
