#!/usr/bin/env python
"""Does ``torch.compile`` pay per candidate? Compile time against the per-step saving, side by side.

A search trains a new path of the supernet every trial, and the supernet's forward branches on
the chosen path in Python, so a compiled supernet is traced and compiled again for every
candidate (Dynamo guards on the path). Compiling pays only if a candidate trains for more steps
than ``break-even = compile overhead / (eager step - compiled step)``.

For each space named by ``--spaces`` (default ``mnist1d`` with batches of 64 MNIST-1D-shaped
inputs, and ``nb201`` with batches of ``--nb201-batch`` CIFAR-shaped ``(3, 32, 32)`` inputs) and a
few seeded paths of it, two copies of the supernet start from the same weights: one eager, one
wrapped in ``torch.compile`` (``--mode``: ``default``; on a GPU ``reduce-overhead`` adds CUDA
graphs). The compile overhead is the compiled copy's first training step (trace, compile of the
forward and the backward, run) minus the eager copy's median step. Then both copies run
interleaved training steps (``bench_step.race``: zero_grad, forward, cross-entropy, backward, SGD
over every supernet weight) and the saving is the difference of their medians. Inductor's
on-disk caches are pointed at a fresh temporary folder, so every compile is cold, as it is for a
candidate a search has not seen before. Also reported: the difference between the two copies'
losses on their first step (same weights, same batch: only the arithmetic differs; compiled code
fuses and reassociates, so close, not equal) and the largest over all their steps (the two
trajectories drift apart from there, as any two float orders of the same training do).

Usage::

    python benchmarks/bench_compile.py                        # CPU, 2 paths of mnist1d and nb201
    python benchmarks/bench_compile.py --quick                # smoke run: 1 path each, few rounds
    python benchmarks/bench_compile.py --device cuda --mode reduce-overhead --nb201-batch 256

The script reports; it never fails on a slow ratio (exit status 0 unless it crashes).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import wpl_nas
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import wpl_nas

from bench_step import architectures, compare, device_sync, input_spec, load_average, machine, make_batches, race, sgd

from wpl_nas import SearchConfig, Supernet, load_space


def timed_step(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
               losses: list[float]) -> Any:
    """bench_step's training step, keeping each step's loss (read after the step: no extra sync inside)."""
    data = itertools.cycle(batches)
    sync = device_sync(next(net.parameters()).device)

    def step() -> None:
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sync()
        losses.append(loss.item())

    return step


def measure(space: wpl_nas.SearchSpace, label: str, arch: wpl_nas.Architecture, batches: list[Any],
            args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape, classes = input_spec(space)
    cfg = SearchConfig()
    torch.manual_seed(0)
    eager = Supernet(space, in_channels=shape[0], num_classes=classes, input_shape=shape).to(device).train()
    eager.set_arch(arch)
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()  # a new candidate: nothing traced yet
    compiled = torch.compile(twin, mode=args.mode)
    eager_losses: list[float] = []
    compiled_losses: list[float] = []
    variants = {"eager": timed_step(eager, sgd(eager.parameters(), cfg), batches, eager_losses),
                "compiled": timed_step(compiled, sgd(twin.parameters(), cfg), batches, compiled_losses)}
    t0 = time.perf_counter()
    variants["compiled"]()  # traces and compiles forward and backward, then runs the step
    first = time.perf_counter() - t0
    variants["eager"]()
    # Both copies have taken one step on the same batch: the timed steps compare like with like.
    times = race(variants, rounds=args.repeats, warmup=args.warmup, budget=args.budget)
    row = compare(times, "eager", "compiled", resamples=100 if args.quick else 1000, seed=0)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    overhead = first - eager_s
    saving = eager_s - compiled_s
    n = min(len(eager_losses), len(compiled_losses))
    row.update(space=space.name, arch_label=label, arch=str(arch), batch_size=len(batches[0][0]),
               first_compiled_step_s=first, compile_overhead_s=overhead, saving_ms=saving * 1e3,
               break_even_steps=overhead / saving if saving > 0 else math.inf,
               first_loss_difference=abs(eager_losses[0] - compiled_losses[0]),
               max_loss_difference=max(abs(a - b) for a, b in zip(eager_losses[:n], compiled_losses[:n], strict=True)))
    print(f"  {space.name:<8} {label:<11} compile {overhead:6.1f} s; eager {eager_s * 1e3:7.2f} ms, compiled "
          f"{compiled_s * 1e3:7.2f} ms (x{row['ratio']:.2f}); break-even {row['break_even_steps']:.0f} steps",
          file=sys.stderr, flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: one path per space, few rounds")
    p.add_argument("--device", default="cpu", help="torch device [default: %(default)s]")
    p.add_argument("--mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode; reduce-overhead uses CUDA graphs on a GPU [default: %(default)s]")
    p.add_argument("--spaces", default="mnist1d,nb201", help="comma-separated spaces [default: %(default)s]")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of 1-D spaces [default: %(default)s]")
    p.add_argument("--nb201-batch", type=int, default=32, help="batch size of 2-D spaces [default: %(default)s]")
    p.add_argument("--archs", type=int, default=None, help="paths per space: seeded samples + the largest "
                                                            "(default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 60; quick 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 3; quick 1)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per path (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the search's default: 1)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    args.archs = args.archs or (1 if args.quick else 2)
    args.repeats = args.repeats or (8 if args.quick else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.budget = args.budget if args.budget is not None else 30.0
    args.pool, args.data = 4, "random"
    torch.set_num_threads(args.threads)
    # Cold compiles: inductor's caches (FX graphs, autotuning, kernels) in a folder of this run only;
    # inductor reads the variable when it first compiles.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-")
    device = torch.device(args.device)
    env = {**machine(device), "mode": args.mode, "repeats": args.repeats, "quick": args.quick,
           "command": "python benchmarks/bench_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"# bench_compile: torch {env['torch']}, {env['num_threads']} threads, {env['cpu']}, device {device}, "
          f"mode {args.mode}", file=sys.stderr)
    start = time.perf_counter()
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name.strip())
        shape, classes = input_spec(space)
        args.batch_size, batch = (args.nb201_batch if space.dims == 2 else args.batch_size), args.batch_size
        batches, _ = make_batches(args, device, shape=shape, classes=classes)
        args.batch_size = batch
        for label, arch in architectures(space, args.archs):
            rows.append(measure(space, label, arch, batches, args, device))
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = load_average()
    print(f"## torch.compile per candidate ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} threads; "
          f"{env['cpu']}; device {device}; mode {args.mode}; {env['seconds']} s; load average "
          f"{env['load_average_at_start']} -> {env['load_average_at_end']})\n")
    print("| space | path | batch | compile overhead s | eager ms | compiled ms | ratio [95% CI] | break-even steps "
          "| loss diff, first step | max |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['space']} | {r['arch_label']} | {r['batch_size']} | {r['compile_overhead_s']:.1f} "
              f"| {r['baseline_ms']:.2f} | {r['variant_ms']:.2f} | {r['ratio']:.2f} [{r['ci95'][0]:.2f}, "
              f"{r['ci95'][1]:.2f}] | {r['break_even_steps']:.0f} | {r['first_loss_difference']:.1e} "
              f"| {r['max_loss_difference']:.1e} |")
    print("\nPaths: " + "; ".join(f"{r['space']} {r['arch_label']} = {r['arch']}" for r in rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
