#!/usr/bin/env python
"""Training-step throughput by precision (``--precision``), as ratios measured side by side.

``bf16/fp32`` (and ``fp16/fp32`` when asked): one training step of the trainer's own loop
(:meth:`wpl_nas.CandidateTrainer.run_epoch` limited to one batch: zero_grad, forward under autocast,
cross-entropy, backward, the strategy's hooks, gradient clipping, SGD step, with fp16's gradient
scaler) for each precision, on the default ``mnist1d`` supernet with the default strategy (WPL) and
the search's default options, batches of 64 MNIST-1D-shaped random sequences ``(1, 40)``. Each
precision has its own trainer on its own copy of the supernet (same initial weights, same batches);
the variants run in interleaved rounds in one process (``bench_step.race``), and a figure is the
ratio of median step times with a bootstrap 95% interval. Also reported: each variant's mean
training loss over its timed steps, a check that the cheaper arithmetic still trains.

``--device cuda`` runs the same comparison on a GPU (each step then waits for its kernels);
``--channels-last`` adds ``fp32+cl`` and ``bf16+cl`` variants (the channels_last memory format,
which changes nothing for a 1-D space: use it with ``--space nb201``, whose batches are CIFAR-shaped).

Usage::

    python benchmarks/bench_precision.py                       # CPU, fp32 vs bf16, ~1 min on 2 cores
    python benchmarks/bench_precision.py --precisions fp32,bf16,fp16 --repeats 30   # fp16 too (slow on CPU)
    python benchmarks/bench_precision.py --device cuda         # on a GPU
    python benchmarks/bench_precision.py --space nb201 --channels-last --device cuda
    python benchmarks/bench_precision.py --quick               # smoke run (what the test runs)

The script reports; it never fails on a slow ratio (exit status 0 unless it crashes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

try:
    import wpl_nas
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import wpl_nas

from bench_step import compare, input_spec, load_average, machine, race

from wpl_nas import SearchConfig, load_space
from wpl_nas.lab.scenarios import default_arch
from wpl_nas.training.precision import resolve_precision


def trainer_for(space: wpl_nas.SearchSpace, shape: tuple[int, ...], classes: int, x: torch.Tensor,
                y: torch.Tensor, *, precision: str, channels_last: bool, device: torch.device,
                strategy: str) -> wpl_nas.CandidateTrainer:
    """A trainer on a fresh supernet (seed 0: the same weights for every variant) with the search's defaults."""
    config = SearchConfig(precision=precision, channels_last="on" if channels_last else "off")
    torch.manual_seed(0)
    net = wpl_nas.Supernet(space, in_channels=shape[0], num_classes=classes, input_shape=shape)
    parts = wpl_nas.assemble(net, config, device=device, strategy=strategy, strategy_options=config)
    data = TensorDataset(x, y)
    return parts.trainer(train_set=data, held_out=data, eval_set=(x[:256].to(device), y[:256].to(device)),
                         epochs=1, seed=0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few rounds (< 20 s)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N [default: %(default)s]")
    p.add_argument("--space", default="mnist1d", help="search space [default: %(default)s]")
    p.add_argument("--strategy", default="wpl", help="strategy whose hooks run in each step [default: %(default)s]")
    # fp16 is left out by default: a CPU's fp16 kernels are ~50x slower than fp32 (benchmarks/README.md).
    p.add_argument("--precisions", default="fp32,bf16",
                   help="comma-separated precisions compared, the first the baseline [default: %(default)s]; "
                        "fp16 too with fp32,bf16,fp16")
    p.add_argument("--arch", choices=("sample", "largest"), default="sample",
                   help="the path trained: space.sample(random.Random(0)), or the largest (all-conv_5 on mnist1d)")
    p.add_argument("--channels-last", action="store_true", help="also each precision with channels_last")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 300; quick 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 20; quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the search's default: 1)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    repeats = args.repeats or (20 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 20)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = load_space(args.space)
    shape, classes = input_spec(space)
    gen = torch.Generator().manual_seed(1234)
    n = args.batch_size * 16
    x, y = torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)
    env = {**machine(device), "space": space.name, "arch": args.arch, "strategy": args.strategy,
           "batch_size": args.batch_size,
           "repeats": repeats, "warmup": warmup, "quick": args.quick,
           "command": "python benchmarks/bench_precision.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"# bench_precision: torch {env['torch']}, {env['num_threads']} threads, {env['cpu']}, device {device}",
          file=sys.stderr)
    start = time.perf_counter()
    arch = space.sample(random.Random(0)) if args.arch == "sample" else default_arch(space)
    variants: dict[str, Any] = {}
    losses: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for precision in args.precisions.split(","):
        for cl in (False, True) if args.channels_last else (False,):
            name = precision + ("+cl" if cl else "")
            try:
                resolve_precision(precision, device)
            except wpl_nas.ConfigError as exc:  # e.g. bf16 on an old GPU: reported, not fatal
                skipped[name] = str(exc)
                continue
            trainer = trainer_for(space, shape, classes, x, y, precision=precision, channels_last=cl,
                                  device=device, strategy=args.strategy)
            ctx = trainer.context(arch, 0)
            trainer.supernet.set_arch(arch)
            trainer.strategy.before_candidate(ctx)
            order = torch.Generator().manual_seed(0)
            losses[name] = []

            def step(trainer: wpl_nas.CandidateTrainer = trainer, ctx: Any = ctx, order: torch.Generator = order,
                     out: list[float] = losses[name]) -> None:
                loss, _ = trainer.run_epoch(ctx, order, limit=1)  # .item() inside: the step has finished
                out.append(loss)

            variants[name] = step
    times = race(variants, rounds=repeats, warmup=warmup)
    base = next(iter(variants))
    rows = [{**compare(times, base, name, resamples=100 if args.quick else 1000, seed=0),
             "loss": sum(losses[name][-repeats:]) / max(len(losses[name][-repeats:]), 1)} for name in variants]
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = load_average()
    print(f"## Training-step time by precision ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} "
          f"threads; {env['cpu']}; device {device}; {space.name}, {args.strategy}, batch {args.batch_size}; "
          f"{repeats} rounds; {env['seconds']} s; load average {env['load_average_at_start']} -> "
          f"{env['load_average_at_end']})\n")
    print(f"| variant | ms/step (IQR) | steps/s | ratio to {base} [95% CI] | mean loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['variant_ms']:.2f} ({r['variant_iqr_ms']:.2f}) | {1e3 / r['variant_ms']:.0f} | "
              f"{r['ratio']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['loss']:.3f} |")
    for name, why in skipped.items():
        print(f"\n{name}: not measured ({why})")
    print(f"\nArchitecture: {arch}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
