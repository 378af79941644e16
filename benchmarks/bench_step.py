#!/usr/bin/env python
"""Per-step speed of the supernet against a stand-alone network, as a ratio measured side by side.

``supernet / standalone``: one training step of the supernet on a chosen path (SGD over *all*
supernet parameters, as the search does) against the same step of ``supernet.standalone(arch)``
(SGD over its own parameters), on a few fixed architectures of each space named by ``--spaces``
(default ``mnist1d``), with batches shaped for the space: MNIST-1D's ``(B, 1, 40)`` for 1-D and
MLP spaces, CIFAR's ``(B, 3, 32, 32)`` for 2-D ones, 10 classes; for a recurrent (``rnn``) space,
windows of 35 tokens over a 10,000-word vocabulary (Penn Treebank's). Target: <= 1.10x.

What the consolidation strategies cost per step (WPL and the rest against ``naive``, and the
closed-form penalty against an autograd one) is measured by ``bench_strategies.py``, which
imports this module's timing harness (:func:`race`, :func:`compare`, :func:`machine`).

One step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward,
``optimizer.step()`` (SGD with the search's default lr, momentum 0.9 and weight decay): the
trainer's inner loop without gradient clipping and bookkeeping.

Method: every variant of a comparison has its own copy of the model and optimiser, starting
from the same state, and sees the same batches. The variants are run in interleaved rounds in
one process (one step each per round, the order rotated every round) so that machine noise
hits all of them alike; after a warm-up, each step is timed with ``time.perf_counter`` (with
Python's garbage collector paused). A ratio is the median step time of the variant over the
median of its baseline; the 95% interval comes from a bootstrap over rounds.

Usage::

    python benchmarks/bench_step.py                      # full run, about 1.5 min on 2 cores
    python benchmarks/bench_step.py --quick              # smoke run, < 15 s
    python benchmarks/bench_step.py --json results.json  # also write the figures as JSON
    python benchmarks/bench_step.py --spaces mnist1d,mlp,mobilenet,darts,enas-micro,enas-rnn  # every kind

The script reports; it never fails on a slow ratio (exit status 0 unless it crashes).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

try:
    import wpl_nas
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import wpl_nas

from _common import cpu_name

from wpl_nas import Architecture, SearchConfig, Supernet, load_space
from wpl_nas.lab.scenarios import default_arch

SPACE = "mnist1d"
INPUT_SHAPE = (1, 40)
NUM_CLASSES = 10
TARGETS = {"supernet/standalone": 1.10}
Step = Callable[[], Any]


# --- data ------------------------------------------------------------------------------------
def input_spec(space: wpl_nas.SearchSpace) -> tuple[tuple[int, ...], int]:
    """The per-sample input shape and the classes (vocabulary) of the batches for ``space``."""
    if space.dims == 0:
        return (35,), 10_000
    return ((3, 32, 32) if space.dims == 2 else INPUT_SHAPE), NUM_CLASSES


def make_batches(args: argparse.Namespace, device: torch.device, *, shape: tuple[int, ...] = INPUT_SHAPE,
                 classes: int = NUM_CLASSES) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], TensorDataset]:
    """A small fixed pool of training batches, plus a held-out set (for strategies' importance estimates).
    Random inputs of per-sample ``shape`` (token ids when ``shape`` has one dimension, with
    next-token targets) unless ``args.data`` asks for MNIST-1D."""
    if len(shape) == 1:
        gen = torch.Generator().manual_seed(1234)
        n = args.batch_size * args.pool
        tokens = torch.randint(0, classes, (n + 512, shape[0] + 1), generator=gen)
        x, y = tokens[:n, :-1], tokens[:n, 1:]
        held_out = TensorDataset(tokens[n:, :-1], tokens[n:, 1:])
    elif args.data == "mnist1d" and shape == INPUT_SHAPE:
        data = wpl_nas.load_dataset("mnist1d", data_dir=args.data_dir)
        assert isinstance(data.train, TensorDataset) and isinstance(data.val, TensorDataset)
        x, y = data.train.tensors
        held_out = data.val
    else:
        gen = torch.Generator().manual_seed(1234)
        n = args.batch_size * args.pool
        x = torch.randn(n, *shape, generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
        held_out = TensorDataset(torch.randn(512, *shape, generator=gen),
                                 torch.randint(0, classes, (512,), generator=gen))
    batches = [(x[i: i + args.batch_size].to(device), y[i: i + args.batch_size].to(device))
               for i in range(0, args.batch_size * args.pool, args.batch_size)]
    held_out = TensorDataset(*(t.to(device) for t in held_out.tensors))
    return batches, held_out


def architectures(space: wpl_nas.SearchSpace, count: int) -> list[tuple[str, Architecture]]:
    """``count - 1`` seeded samples plus the largest path: every cell edge on the space's largest
    convolution (``all-conv_5`` on ``mnist1d``), or the last value of every choice for other kinds."""
    archs = [(f"sample({i})", space.sample(random.Random(i))) for i in range(count - 1)]
    largest = default_arch(space)
    label = "all-conv_5" if set(largest.values()) == {"conv_5"} else "largest"
    return [*archs, (label, largest)]


# --- one training step -----------------------------------------------------------------------
def make_step(net: torch.nn.Module, opt: torch.optim.Optimizer,
              batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Step:
    """The trainer's step (minus clipping and bookkeeping) as a closure cycling over ``batches``."""
    data = itertools.cycle(batches)
    sync = device_sync(next(net.parameters()).device)

    def step() -> None:
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        sync()

    return step


def device_sync(device: torch.device) -> Callable[[], None]:
    """What a timed step calls last: on CUDA it waits for the queued kernels, so they are timed."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def sgd(params: Any, cfg: SearchConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# --- timing --------------------------------------------------------------------------------------
def race(variants: dict[str, Step], *, rounds: int, warmup: int, budget: float | None = None,
         min_rounds: int = 5, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Interleaved timing: each round runs every variant once, in a rotated order.

    With ``budget`` (seconds of wall time), timing stops early once the timed rounds have taken
    that long and at least ``min_rounds`` are done (a busy machine should not make a run endless).
    ``clock`` times each step: wall time by default; ``time.thread_time`` on one CPU thread leaves
    out the time the OS gives to other processes.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for r in range(rounds):
            if budget is not None and r >= min_rounds and time.perf_counter() - start > budget:
                break
            k = r % len(names)
            order = names[k:] + names[:k]
            if (r // len(names)) % 2:
                order.reverse()
            for name in order:
                fn = variants[name]
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return times


def compare(times: dict[str, list[float]], base: str, other: str, *, resamples: int, seed: int) -> dict[str, Any]:
    """Ratio of medians (other / base) with a paired bootstrap 95% interval over rounds."""
    a, b = times[base], times[other]
    med_a, med_b = statistics.median(a), statistics.median(b)
    rng = random.Random(seed)
    n = len(a)
    boots = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(statistics.median(b[i] for i in idx) / statistics.median(a[i] for i in idx))
    boots.sort()
    lo = boots[int(0.025 * (resamples - 1))] if boots else float("nan")
    hi = boots[math.ceil(0.975 * (resamples - 1))] if boots else float("nan")
    return {"baseline": base, "variant": other, "baseline_ms": med_a * 1e3, "variant_ms": med_b * 1e3,
            "baseline_iqr_ms": _iqr(a) * 1e3, "variant_iqr_ms": _iqr(b) * 1e3,
            "ratio": med_b / med_a, "ci95": [lo, hi], "rounds": n}


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


# --- comparison 1: supernet vs stand-alone ---------------------------------------------------------
def bench_supernet(space: wpl_nas.SearchSpace, archs: list[tuple[str, Architecture]], batches: list[Any],
                   cfg: SearchConfig, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    shape, classes = input_spec(space)
    supernet = Supernet(space, in_channels=shape[0], num_classes=classes, input_shape=shape).to(device).train()
    opt = sgd(supernet.parameters(), cfg)  # every supernet weight, as the search does
    rows: list[dict[str, Any]] = []
    for label, arch in archs:
        supernet.set_arch(arch)
        alone = supernet.standalone(arch).train()
        variants = {"standalone": make_step(alone, sgd(alone.parameters(), cfg), batches),
                    "supernet": make_step(supernet, opt, batches)}
        times = race(variants, rounds=args.repeats, warmup=args.warmup, budget=args.budget)
        row = compare(times, "standalone", "supernet", resamples=args.bootstrap, seed=len(rows))
        row.update(comparison="supernet/standalone", space=space.name, arch_label=label, arch=str(arch),
                   path_params=supernet.count_parameters(arch), supernet_params=supernet.count_parameters())
        rows.append(row)
        print(_progress(row), file=sys.stderr, flush=True)
    return rows


# --- reporting ---------------------------------------------------------------------------------
def _progress(row: dict[str, Any]) -> str:
    return (f"  {row['comparison']:<20} {row['space']:<11} {row['arch_label']:<11} {row['baseline_ms']:7.3f} ms -> "
            f"{row['variant_ms']:7.3f} ms  x{row['ratio']:.3f}")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Geometric mean of each comparison's ratios over the architectures, per space."""
    out = []
    for comp, space in dict.fromkeys((r["comparison"], r["space"]) for r in rows):
        ratios = [r["ratio"] for r in rows if r["comparison"] == comp and r["space"] == space]
        gmean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        target = TARGETS.get(comp)
        out.append({"comparison": comp, "space": space, "geomean_ratio": gmean, "worst_ratio": max(ratios),
                    "target": target, "met": None if target is None else max(ratios) <= target})
    return out


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    lines = ["| comparison | space | arch | baseline ms (IQR) | variant ms (IQR) | ratio | 95% CI | target |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        target = TARGETS.get(r["comparison"])
        verdict = "info" if target is None else f"≤ {target:.2f} {'✓' if r['ratio'] <= target else '✗'}"
        lines.append(f"| {r['comparison']} | {r['space']} | {r['arch_label']} "
                     f"| {r['baseline_ms']:.3f} ({r['baseline_iqr_ms']:.3f}) "
                     f"| {r['variant_ms']:.3f} ({r['variant_iqr_ms']:.3f}) | {r['ratio']:.3f} "
                     f"| {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} | {verdict} |")
    lines += ["", "| comparison | space | geomean ratio | worst ratio | target | met |", "|---|---|---:|---:|---|---|"]
    for s in summary:
        goal = "info" if s["target"] is None else f"≤ {s['target']:.2f}"
        met = "—" if s["met"] is None else ("yes" if s["met"] else "no")
        lines.append(f"| {s['comparison']} | {s['space']} | {s['geomean_ratio']:.3f} | {s['worst_ratio']:.3f} "
                     f"| {goal} | {met} |")
    return "\n".join(lines)


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures depend on besides the code: versions, CPU, threads, load (for the report header)."""
    cpu = cpu_name()
    if device.type == "cuda":
        cpu += f"; {torch.cuda.get_device_name(device)}"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "wpl_nas": wpl_nas.__version__, "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "device": str(device), "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(), "load_average_at_start": load_average()}


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {**machine(device), "batch_size": args.batch_size, "budget_s": args.budget, "repeats": args.repeats,
            "warmup": args.warmup, "architectures": args.archs, "data": args.data, "quick": args.quick}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer rounds and architectures (< 15 s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per comparison (default 200; quick 25)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 20; quick 3)")
    p.add_argument("--archs", type=int, default=None,
                   help="architectures: N-1 seeded samples + all-conv_5 (default 4; quick 2)")
    p.add_argument("--device", default="cpu", help="torch device (the targets are for cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) first (default: leave torch's default, which is printed)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed rounds per comparison group before stopping early "
                        "(default 45; quick 2.5; 0: no limit)")
    p.add_argument("--data", choices=("random", "mnist1d"), default="random",
                   help="random MNIST-1D-shaped tensors, or the real MNIST-1D data (cached under --data-dir)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--spaces", default=SPACE,
                   help="comma-separated spaces (names or .yaml paths) to measure [default: %(default)s]")
    p.add_argument("--pool", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap resamples for the CI (default 1000; quick 100)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats if args.repeats is not None else (25 if quick else 200)
    args.warmup = args.warmup if args.warmup is not None else (3 if quick else 20)
    args.archs = args.archs if args.archs is not None else (2 if quick else 4)
    args.bootstrap = args.bootstrap if args.bootstrap is not None else (100 if quick else 1000)
    if args.budget is None:
        args.budget = 2.5 if quick else 45.0
    args.budget = args.budget or None
    if args.batch_size < 1 or args.repeats < 2 or args.archs < 1 or args.pool < 1 or args.warmup < 0:
        p.error("--batch-size, --archs, --pool must be >= 1, --repeats >= 2, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    env = environment(args, device)
    print(f"# bench_step: torch {env['torch']}, {env['num_threads']} threads "
          f"(interop {env['num_interop_threads']}), {env['cpu']}, device {device}", file=sys.stderr)
    cfg = SearchConfig()  # lr, momentum and weight decay: the search's defaults
    rows, archs = [], []
    for name in args.spaces.split(","):
        space = load_space(name.strip())
        shape, classes = input_spec(space)
        space_archs = architectures(space, args.archs)
        batches, _ = make_batches(args, device, shape=shape, classes=classes)
        rows += bench_supernet(space, space_archs, batches, cfg, args, device)
        archs += [(f"{space.name} {label}", arch) for label, arch in space_archs]
    summary = summarise(rows)
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = load_average()
    print(f"## Step-time ratios ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} threads; "
          f"{env['cpu']}; batch {args.batch_size}; up to {args.repeats} rounds; {env['seconds']} s; "
          f"load average {env['load_average_at_start']} -> {env['load_average_at_end']})\n")
    print(markdown(rows, summary))
    print("\nArchitectures: " + "; ".join(f"{label} = {arch}" for label, arch in archs))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "summary": summary, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
