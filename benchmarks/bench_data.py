#!/usr/bin/env python
"""The data path: training-step time in memory vs streamed from image files, and uint8 vs float32 bytes.

Step time, as ratios measured side by side in one process: one epoch of the trainer's own loop
(:meth:`wpl_nas.CandidateTrainer.run_epoch`: batches, zero_grad, forward, cross-entropy, backward,
the strategy's hooks, clipping, SGD step) over the same CIFAR-shaped images (``(3, 32, 32)``, written
as PNG files by this script into a temporary ``imagefolder`` directory: random pixels, 10 classes)
read four ways:

* ``memory-float32``: a TensorDataset of normalised float32 images (the path of data given as tensors);
* ``memory-uint8``: :class:`~wpl_nas.data._images.ImageTensors`, the uint8 pixels normalised per
  batch (the path of the torchvision data sets since issue 15);
* ``stream-w0`` / ``stream-w2``: ``--dataset imagefolder``, each batch decoded from the PNG files
  through the trainer's DataLoader, in the main process (``--workers 0``) or by 2 worker processes.

Each variant has its own trainer on its own copy of the supernet (same initial weights), the WPL
strategy and the search's defaults; the variants run in interleaved rounds (``bench_step.race``), a
round being one epoch each, and a figure is the ratio of median epoch times (so of step times) to
``memory-float32`` with a bootstrap 95% interval. The network is a deliberately small 2-D cell
space (``tiny2d`` below) so that what the data path costs shows; a real space's larger step dilutes
it. Memory: the bytes of the training images held as uint8 and as float32, for these images and
for CIFAR-10's 50,000 (computed from the element sizes, which is what the storage holds).

Load time, side by side in interleaved rounds: ``load_dataset("imagefolder", ...)`` of the same folder
with its per-channel statistics measured (a run's first load: every image of the statistics' sample
decoded) and given back (``statistics=``: what a resumed search, ``export``, ``anatomy``, ``rank``
and ``retrain`` do with the statistics the run recorded in ``data.json``).

Usage::

    python benchmarks/bench_data.py              # ~1-2 min on 2 cores
    python benchmarks/bench_data.py --quick      # smoke run (what the test runs)

The script reports; it never fails on a slow ratio (exit status 0 unless it crashes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

try:
    import wpl_nas
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import wpl_nas

from bench_step import compare, load_average, machine, race

from wpl_nas.data import load_dataset
from wpl_nas.data._bundle import take
from wpl_nas.data._imagefolder import STAT_SAMPLES
from wpl_nas.data._images import ImageTensors
from wpl_nas.lab.scenarios import default_arch
from wpl_nas.spaces import SearchSpace

TINY_2D = {
    "name": "tiny2d", "description": "a small 2-D cell space (bench_data)", "citation": "wpl-nas benchmarks",
    "dims": 2, "skeleton": {"stem_channels": 8, "stages": [{"channels": 8, "cells": 1}, {"channels": 16, "cells": 1}]},
    "cell": {"nodes": 3, "edges": "all", "ops": ["none", "skip_connect", "nor_conv_3x3"]},
}
CIFAR10_TRAIN = 50_000


def write_images(root: Path, *, per_class: int, classes: int = 10, seed: int = 0) -> None:
    """``root/train/class<c>/<i>.png``: 32x32 RGB random pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few images and rounds (< 30 s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=None, help="training images per class (default 64; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds, one epoch each (default 20; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the search's default: 1)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    per_class = args.images or (8 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    batch_size = 16 if args.quick else args.batch_size
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = {**machine(device), "batch_size": batch_size, "images_per_class": per_class, "repeats": repeats,
           "warmup": warmup, "quick": args.quick,
           "command": "python benchmarks/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"# bench_data: torch {env['torch']}, {env['num_threads']} threads, {env['cpu']}", file=sys.stderr)
    start = time.perf_counter()
    space = SearchSpace.from_dict(TINY_2D)
    arch = default_arch(space)  # every edge a 3x3 convolution: the path a step is usually spent on
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, per_class=per_class)
        data = load_dataset("imagefolder", data_dir=root, val_fraction=0.2, seed=0, image_size=32)
        # The same training images, decoded once: uint8 pixels and their normalised float32 copy.
        pixels = torch.stack([data.train.read(i)[0] for i in range(len(data.train))])  # type: ignore[attr-defined]
        labels = torch.tensor([label for _, label in data.train.samples])  # type: ignore[attr-defined]
        uint8 = ImageTensors(pixels, labels, mean=data.train.mean, std=data.train.std)  # type: ignore[attr-defined]
        float32 = TensorDataset(*take(uint8, torch.arange(len(uint8))))
        sources: dict[str, tuple[Any, int]] = {"memory-float32": (float32, 0), "memory-uint8": (uint8, 0),
                                               "stream-w0": (data.train, 0), "stream-w2": (data.train, 2)}
        variants, losses = {}, {}
        for name, (train, workers) in sources.items():
            options = SimpleNamespace(**{k: getattr(wpl_nas.SearchConfig(), k) for k in
                                         ("lr", "momentum", "weight_decay", "grad_clip", "eval_batch_size")},
                                      batch_size=batch_size, workers=workers)
            parts = wpl_nas.assemble(wpl_nas.build_supernet(space, data, seed=0), options, device=device,
                                     strategy="wpl", strategy_options=wpl_nas.SearchConfig())
            trainer = parts.trainer(train_set=train, held_out=data.val,
                                    eval_set=take(uint8, torch.arange(batch_size)), epochs=1, seed=0)
            ctx = trainer.context(arch, 0)
            trainer.supernet.set_arch(arch)
            trainer.strategy.before_candidate(ctx)
            order = torch.Generator().manual_seed(0)
            losses[name] = []

            def epoch(trainer: wpl_nas.CandidateTrainer = trainer, ctx: Any = ctx, order: torch.Generator = order,
                      out: list[float] = losses[name]) -> None:
                loss, _ = trainer.run_epoch(ctx, order)
                out.append(loss)

            variants[name] = epoch
        steps = -(-len(uint8) // batch_size)
        times = race(variants, rounds=repeats, warmup=warmup)
        # Loading the folder as a run first does (statistics measured on its sample of images) and as
        # every later load of the run does (given back the statistics the run recorded).
        loads = {"load-measured": lambda: load_dataset("imagefolder", data_dir=root, image_size=32),
                 "load-recorded": lambda: load_dataset("imagefolder", data_dir=root, image_size=32,
                                                       statistics=data.statistics)}
        load_times = race(loads, rounds=2 if args.quick else 5, warmup=1)
    base = "memory-float32"
    rows = [{**compare(times, base, name, resamples=100 if args.quick else 1000, seed=0),
             "steps_per_epoch": steps, "loss": losses[name][-1]} for name in variants]
    load = {**compare(load_times, "load-measured", "load-recorded", resamples=100 if args.quick else 1000, seed=0),
            "sample_images": min(STAT_SAMPLES, per_class * 10)}
    memory = {"images": len(uint8), "uint8_bytes": pixels.untyped_storage().nbytes(),
              "float32_bytes": float32.tensors[0].untyped_storage().nbytes(),
              "cifar10_uint8_bytes": CIFAR10_TRAIN * 3 * 32 * 32 * torch.tensor([], dtype=torch.uint8).element_size(),
              "cifar10_float32_bytes": CIFAR10_TRAIN * 3 * 32 * 32 * torch.tensor([]).element_size()}
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = load_average()
    print(f"## Data path: step time and storage ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} "
          f"threads; {env['cpu']}; CPU; tiny2d, wpl, batch {batch_size}, {len(uint8)} training images, {steps} "
          f"steps an epoch; {repeats} rounds; {env['seconds']} s; load average {env['load_average_at_start']} -> "
          f"{env['load_average_at_end']})\n")
    print(f"| variant | ms/step (IQR of the epoch / steps) | ratio to {base} [95% CI] | last epoch's loss |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['variant_ms'] / steps:.2f} ({r['variant_iqr_ms'] / steps:.2f}) | "
              f"{r['ratio']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['loss']:.3f} |")
    print(f"\n| storage | {memory['images']} images | CIFAR-10 train ({CIFAR10_TRAIN:,}) |\n|---|---|---|")
    print(f"| uint8 | {memory['uint8_bytes']:,} B | {memory['cifar10_uint8_bytes'] / 1e6:.1f} MB |")
    print(f"| float32 | {memory['float32_bytes']:,} B | {memory['cifar10_float32_bytes'] / 1e6:.1f} MB |")
    print(f"\n| load of the folder ({load['sample_images']} images in the statistics' sample) | ms | ratio [95% CI] |"
          "\n|---|---:|---|")
    print(f"| statistics measured (a run's first load) | {load['baseline_ms']:.1f} | 1.00x |")
    print(f"| statistics recorded by the run, given back (resume, export, ...) | {load['variant_ms']:.1f} | "
          f"{load['ratio']:.3f}x [{load['ci95'][0]:.3f}, {load['ci95'][1]:.3f}] |")
    print(f"\nArchitecture: {arch}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows, "memory": memory, "load": load},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
