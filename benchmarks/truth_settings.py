#!/usr/bin/env python
"""Which search space and data make a good ground truth for the ranking-fidelity benchmark?

A ranking-fidelity benchmark compares a search's ranking of architectures with their *stand-alone*
quality (``wpl_nas.fidelity.train_standalone``: a fresh network, plain SGD, scored on the validation
split). That ground truth is only useful if (a) the architectures really differ in quality, and
(b) the ranking it gives is reproducible: trained again with another seed, the same architectures
should come out in (nearly) the same order. This script measures both for a few candidate settings
(space + data + epochs). For each setting it

* samples ``--archs`` distinct architectures uniformly at random from the space (``--arch-seed``);
* trains each stand-alone with ``--seeds`` training seeds (0, 1, ...; the seed sets the initial
  weights and the data order; the train/validation split is the same for all of them), exactly
  as ``wpl-nas rank`` does, with the search's default optimiser settings (``SearchConfig()``);
* reports, for the *truth* (an architecture's accuracy averaged over the seeds): mean, std, min,
  max and interquartile range, over all architectures and over the non-degenerate ones;
  the share of *degenerate* architectures (truth below ``chance + --degenerate-margin``, e.g. a cell
  whose output is cut off by ``none`` edges); the seed-to-seed Kendall τ (τ between the scores of
  two seeds, mean over seed pairs), over all architectures, over the non-degenerate ones and over
  the better half by truth (where a good search's candidates are: can the truth order *them*?);
  the same for Pearson's r, and from it the *truth reliability* (Spearman–Brown: the expected
  correlation between this ``--seeds``-seed mean and another one from fresh seeds); the noise
  ratio (mean per-architecture std over seeds divided by the std of the truth, non-degenerate);
  and the seconds per stand-alone training (wall and this thread's CPU time).

The settings (``SETTINGS`` below) combine a space (a built-in name or a YAML file next to this
script, under ``spaces/``), MNIST-1D generated in memory with some of ``mnist1d``'s generation
arguments overridden (e.g. more noise), optionally only the first ``train_subset`` samples of the
training split (the validation split, which scores, is never cut), and an epoch budget.

Usage::

    python benchmarks/truth_settings.py --quick                      # smoke run (seconds)
    python benchmarks/truth_settings.py --settings default,wide-1k-e20 --archs 30 --seeds 3 \\
        --out truth_settings.json
    python benchmarks/truth_settings.py --list                       # the settings, one line each

Torch runs on one thread (``torch.set_num_threads(1)``). Results go to stdout as a Markdown table
and, with ``--out``, to a JSON file (rewritten after every setting, with each architecture's
scores; a setting already in that file with the same parameters is not trained again).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from wpl_nas.config import SearchConfig
from wpl_nas.data import DataBundle
from wpl_nas.data._bundle import make_bundle
from wpl_nas.evaluation import kendall_tau
from wpl_nas.fidelity import train_standalone
from wpl_nas.spaces import Architecture, SearchSpace, load_space

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
NUM_CLASSES = 10


@dataclass(frozen=True)
class Setting:
    """One candidate ground-truth setting.

    Attributes:
        space: A built-in space name, or a YAML file name under ``benchmarks/spaces/``.
        epochs: Stand-alone training epochs.
        train_subset: Train on the first this many samples of the training split (0: all of it).
        mnist1d: Overrides of ``mnist1d.data.get_dataset_args()`` (e.g. ``iid_noise_scale``).
        config: Overrides of the :class:`~wpl_nas.config.SearchConfig` defaults used for training (e.g. ``lr``).
        note: One line for the report.
    """

    space: str
    epochs: int
    train_subset: int = 0
    mnist1d: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS: dict[str, Setting] = {
    "default": Setting("mnist1d", 10, note="the current default: mnist1d space (32/64 ch, 3 ops), 3200 train"),
    "default-1k": Setting("mnist1d", 10, train_subset=1000, note="mnist1d space, 1000 train samples"),
    "default-noisy": Setting("mnist1d", 10, mnist1d={"iid_noise_scale": 0.1, "corr_noise_scale": 0.5},
                             note="mnist1d space, 3200 train, noisier data (iid 0.1, corr 0.5)"),
    "wide": Setting("mnist1d-wide.yaml", 10, note="wide space (8/16 ch, 6 ops), 3200 train"),
    "wide-1k": Setting("mnist1d-wide.yaml", 10, train_subset=1000, note="wide space, 1000 train samples"),
    "wide-1k-e20": Setting("mnist1d-wide.yaml", 20, train_subset=1000,
                           note="wide space, 1000 train samples, 20 epochs"),
    "wide-1k-e20-lr02": Setting("mnist1d-wide.yaml", 20, train_subset=1000, config={"lr": 0.02},
                                note="wide space, 1000 train samples, 20 epochs, lr 0.02"),
    "mlp": Setting("mlp", 10, note="mlp space (3 layers, widths 64/128/256, relu/tanh/sigmoid), 3200 train"),
    "mlp-1k": Setting("mlp", 10, train_subset=1000, note="mlp space, 1000 train samples"),
    "wide-noisy": Setting("mnist1d-wide.yaml", 10, mnist1d={"iid_noise_scale": 0.1, "corr_noise_scale": 0.5},
                          note="wide space, 3200 train, noisier data (iid 0.1, corr 0.5)"),
}
QUICK_SETTINGS = ("default", "wide-1k")


def resolve_space(name: str) -> str:
    """A built-in space name as is; a ``.yaml`` name as the path of the file under ``spaces/``."""
    return str(SPACES_DIR / name) if name.endswith((".yaml", ".yml")) else name


def make_data(setting: Setting, *, split_seed: int = 0) -> DataBundle:
    """MNIST-1D generated in memory with ``setting.mnist1d``'s overrides, split as the library's loader
    splits it (``val_fraction`` 0.2, split seed ``split_seed``), the training split then cut to
    ``setting.train_subset`` samples if that is set."""
    from mnist1d.data import get_dataset_args  # scipy, matplotlib: only here

    from wpl_nas.data._mnist1d import _generate  # the library's generation, global RNGs left as they were

    args = get_dataset_args()
    for key, value in setting.mnist1d.items():
        if not hasattr(args, key):
            raise SystemExit(f"mnist1d has no generation argument {key!r}")
        setattr(args, key, value)
    raw = _generate(args)
    x, y = raw["x"].unsqueeze(1), raw["y"]
    x_test, y_test = raw["x_test"].unsqueeze(1), raw["y_test"]
    bundle = make_bundle("mnist1d", (x, y), (x_test, y_test), num_classes=NUM_CLASSES, val_fraction=0.2,
                         seed=split_seed)
    if setting.train_subset:
        assert isinstance(bundle.train, TensorDataset)
        xt, yt = bundle.train.tensors
        if setting.train_subset > len(xt):
            raise SystemExit(f"train_subset={setting.train_subset} exceeds the {len(xt)} training samples")
        # The split is already a random permutation, so its first samples are a random subset.
        bundle = dataclasses.replace(bundle, train=TensorDataset(xt[: setting.train_subset],
                                                                 yt[: setting.train_subset]))
    return bundle


def sample_archs(space: SearchSpace, count: int, seed: int) -> list[Architecture]:
    """``count`` distinct architectures drawn uniformly at random (a repeat is drawn again)."""
    if count > space.size:
        raise SystemExit(f"--archs {count} exceeds the {space.size} architectures of space {space.name!r}")
    rng = random.Random(seed)
    seen: dict[str, Architecture] = {}
    while len(seen) < count:
        arch = space.sample(rng)
        seen.setdefault(str(arch), arch)
    return list(seen.values())


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return math.nan
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return cov / var if var else math.nan


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {k: math.nan for k in ("n", "mean", "std", "min", "max", "q25", "q75", "iqr")}
    q25, _, q75 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "q25": q25, "q75": q75, "iqr": q75 - q25}


def measure(scores: dict[str, list[float]], *, degenerate_below: float) -> dict[str, Any]:
    """The report's figures from ``{arch: [score of seed 0, seed 1, ...]}``."""
    archs = list(scores)
    truth = {a: statistics.fmean(s) for a, s in scores.items()}
    good = [a for a in archs if truth[a] >= degenerate_below]
    n_seeds = len(next(iter(scores.values())))
    pairs = list(itertools.combinations(range(n_seeds), 2))

    def agreement(subset: list[str]) -> dict[str, float]:
        taus = [kendall_tau([scores[a][i] for a in subset], [scores[a][j] for a in subset]) for i, j in pairs]
        rs = [pearson([scores[a][i] for a in subset], [scores[a][j] for a in subset]) for i, j in pairs]
        return {"tau": _nanmean(taus), "tau_min": min(taus, default=math.nan),
                "tau_max": max(taus, default=math.nan), "pearson": _nanmean(rs)}

    seed_std = [statistics.stdev(scores[a]) for a in good] if n_seeds > 1 else []
    good_spread = _spread([truth[a] for a in good])
    noise = statistics.fmean(seed_std) if seed_std else math.nan
    # Spearman–Brown: the expected correlation of the n_seeds-seed mean with another such mean.
    r = agreement(good)["pearson"]
    reliability = n_seeds * r / (1 + (n_seeds - 1) * r) if not math.isnan(r) else math.nan
    top = sorted(archs, key=truth.__getitem__)[len(archs) // 2:]  # the better half by truth
    return {"truth_all": _spread(list(truth.values())), "truth_good": good_spread,
            "degenerate_fraction": 1 - len(good) / len(archs),
            "seed_agreement_all": agreement(archs), "seed_agreement_good": agreement(good),
            "seed_agreement_top_half": agreement(top),
            "seed_std_good": noise,
            "noise_ratio_good": noise / good_spread["std"] if good_spread["std"] else math.nan,
            "truth_reliability_good": reliability}


def run_setting(name: str, setting: Setting, *, archs: int, seeds: int, arch_seed: int,
                degenerate_below: float, log: Any) -> dict[str, Any]:
    space_ref = resolve_space(setting.space)
    space = load_space(space_ref)
    data = make_data(setting)
    chosen = sample_archs(space, archs, arch_seed)
    base = SearchConfig().replace(space=space_ref, epochs=setting.epochs, **setting.config)
    scores: dict[str, list[float]] = {}
    wall: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    for k, arch in enumerate(chosen):
        row = []
        for seed in range(seeds):
            t0, c0 = time.perf_counter(), time.thread_time()
            row.append(train_standalone(base.replace(seed=seed), data, arch, epochs=setting.epochs))
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        scores[str(arch)] = row
        print(f"[{name}] {k + 1}/{len(chosen)} {arch}: {' '.join(f'{s:.4f}' for s in row)} "
              f"({time.perf_counter() - started:.0f} s)", file=log, flush=True)
    return {"setting": setting.as_dict(), "space": space.name, "space_size": space.size,
            "train_samples": len(data.train), "val_samples": len(data.val), "archs": len(chosen), "seeds": seeds,
            "arch_seed": arch_seed, "degenerate_below": degenerate_below,
            "seconds_per_training": statistics.fmean(wall), "cpu_seconds_per_training": statistics.fmean(cpu),
            "seconds_total": time.perf_counter() - started,
            "measures": measure(scores, degenerate_below=degenerate_below), "scores": scores}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| setting | space | train | epochs | truth mean ± std [min, max] | IQR all | non-degen. range (IQR) "
             "| degenerate | seed τ all | seed τ non-degen. | seed τ top half | seed r non-degen. | truth reliability "
             "| noise/spread | s / training |",
             "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m, s = r["measures"], r["setting"]
        ta, tg = m["truth_all"], m["truth_good"]
        lines.append(
            f"| {name} | {r['space']} | {r['train_samples']} | {s['epochs']} | {ta['mean']:.3f} ± {ta['std']:.3f} "
            f"[{ta['min']:.3f}, {ta['max']:.3f}] | {ta['iqr']:.3f} | {tg['min']:.3f}–{tg['max']:.3f} ({tg['iqr']:.3f}) "
            f"| {m['degenerate_fraction']:.0%} | {m['seed_agreement_all']['tau']:+.3f} "
            f"| {m['seed_agreement_good']['tau']:+.3f} | {m['seed_agreement_top_half']['tau']:+.3f} "
            f"| {m['seed_agreement_good']['pearson']:+.3f} "
            f"| {m['truth_reliability_good']:.3f} | {m['noise_ratio_good']:.2f} "
            f"| {r['seconds_per_training']:.1f} ({r['cpu_seconds_per_training']:.1f} CPU) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated settings (default: all): {', '.join(SETTINGS)}")
    parser.add_argument("--archs", type=int, default=30, help="architectures per setting (default 30)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per architecture (default 3)")
    parser.add_argument("--arch-seed", type=int, default=0, help="seed of the architecture sample (default 0)")
    parser.add_argument("--degenerate-margin", type=float, default=0.1,
                        help="degenerate: truth below chance (0.1) + this (default 0.1)")
    parser.add_argument("--epochs", type=int, default=0, help="override every setting's epochs (0: keep)")
    parser.add_argument("--out", type=Path, help="write the results (with every score) to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: settings default and wide-1k, 4 archs, 2 seeds, 1 epoch, 256 train samples")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.list:
        for name, s in SETTINGS.items():
            print(f"{name}: {s.note} ({s.epochs} epochs)")
        return 0
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    settings = {n: SETTINGS[n] for n in names}
    if args.quick:
        settings = {n: dataclasses.replace(SETTINGS[n], epochs=1, train_subset=256) for n in QUICK_SETTINGS}
        args.archs, args.seeds = 4, 2
    elif args.epochs:
        settings = {n: dataclasses.replace(s, epochs=args.epochs) for n, s in settings.items()}
    if args.archs < 2 or args.seeds < 2:
        parser.error("--archs and --seeds must be at least 2 (a ranking needs two architectures, τ two seeds)")
    degenerate_below = 1 / NUM_CLASSES + args.degenerate_margin
    results: dict[str, dict[str, Any]] = {}
    if args.out is not None and args.out.is_file():
        results = json.loads(args.out.read_text()).get("results", {})
    for name, setting in settings.items():
        old = results.get(name)
        if old and old["setting"] == setting.as_dict() and (old["archs"], old["seeds"], old["arch_seed"]) == (
                args.archs, args.seeds, args.arch_seed):
            old["measures"] = measure(old["scores"], degenerate_below=degenerate_below)
            print(f"[{name}] in {args.out}: not trained again", file=sys.stderr)
            continue
        results[name] = run_setting(name, setting, archs=args.archs, seeds=args.seeds, arch_seed=args.arch_seed,
                                    degenerate_below=degenerate_below, log=sys.stderr)
        if args.out is not None:
            args.out.write_text(json.dumps({"command": sys.argv, "torch": torch.__version__, "results": results},
                                           indent=1))
    shown = {n: results[n] for n in settings}
    print(table(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
