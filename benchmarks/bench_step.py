#!/usr/bin/env python
"""Per-step speed of the supernet and of the WPL strategy, as ratios measured side by side.

Three comparisons, each on a few fixed architectures of the ``mnist1d`` space with
MNIST-1D-shaped batches (``(B, 1, 40)``, 10 classes):

1. ``supernet / standalone``: one training step of the supernet on a chosen path (SGD over
   *all* supernet parameters, as the search does) against the same step of
   ``supernet.standalone(arch)`` (SGD over its own parameters). Target: <= 1.10x.
2. ``wpl-proximal / naive`` and ``wpl-gradient / naive``: a step with the WPL hooks, after two
   earlier candidates were consolidated so the penalty is live on the shared tensors, against
   the same step with the ``naive`` strategy's hooks. Target: <= 1.05x.
3. ``autograd-penalty / naive`` and ``wpl-gradient / autograd-penalty`` (information only): the
   same penalty written the straightforward way, ``loss += a/2 * sum(Omega * (theta - theta*)^2)``,
   built as a graph every step, to show what the closed-form injection buys.

One step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward, the strategy's
``after_backward``, ``optimizer.step()`` (SGD, momentum 0.9), the strategy's ``after_step``:
the trainer's inner loop without gradient clipping and bookkeeping. The WPL rows also show the
median time spent inside the two hooks. The search's defaults (``SearchConfig()``) give lr,
momentum, weight decay and ``WPLOptions``; the gradient form (and the autograd penalty, the same
maths) runs with alpha capped at ``1 / (lr * max Omega)`` so that it does not diverge while timed
(its cost does not depend on alpha).

Method: every variant of a comparison has its own copy of the model and optimiser, starting
from the same state, and sees the same batches. The variants are run in interleaved rounds in
one process (one step each per round, the order rotated every round) so that machine noise
hits all of them alike; after a warm-up, each step is timed with ``time.perf_counter`` (with
Python's garbage collector paused). A ratio is the median step time of the variant over the
median of its baseline; the 95% interval comes from a bootstrap over rounds.

Usage::

    python benchmarks/bench_step.py                      # full run, a few minutes on 2 cores
    python benchmarks/bench_step.py --quick              # smoke run, < 30 s
    python benchmarks/bench_step.py --json results.json  # also write the figures as JSON

The script reports; it never fails on a slow ratio (exit status 0 unless it crashes).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from collections.abc import Callable, Iterator, Sequence
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

from wpl_nas import Architecture, SearchConfig, Supernet, WPLOptions, create_strategy, load_space
from wpl_nas.data import iterate_batches
from wpl_nas.strategies import CandidateContext, Strategy, WPLStrategy

SPACE = "mnist1d"
INPUT_SHAPE = (1, 40)
NUM_CLASSES = 10
TARGETS = {"supernet/standalone": 1.10, "wpl-proximal/naive": 1.05, "wpl-gradient/naive": 1.05}
Step = Callable[[], Any]


# --- data ------------------------------------------------------------------------------------
def make_batches(args: argparse.Namespace, device: torch.device) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                        TensorDataset]:
    """A small fixed pool of training batches, plus a held-out set for the Fisher."""
    if args.data == "mnist1d":
        data = wpl_nas.load_dataset("mnist1d", data_dir=args.data_dir)
        assert isinstance(data.train, TensorDataset) and isinstance(data.val, TensorDataset)
        x, y = data.train.tensors
        held_out = data.val
    else:
        gen = torch.Generator().manual_seed(1234)
        n = args.batch_size * args.pool
        x = torch.randn(n, *INPUT_SHAPE, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        held_out = TensorDataset(torch.randn(512, *INPUT_SHAPE, generator=gen),
                                 torch.randint(0, NUM_CLASSES, (512,), generator=gen))
    batches = [(x[i: i + args.batch_size].to(device), y[i: i + args.batch_size].to(device))
               for i in range(0, args.batch_size * args.pool, args.batch_size)]
    held_out = TensorDataset(*(t.to(device) for t in held_out.tensors))
    return batches, held_out


def architectures(space: wpl_nas.SearchSpace, count: int) -> list[tuple[str, Architecture]]:
    """``count - 1`` seeded samples plus the all-``conv_5`` cell (the largest path)."""
    archs = [(f"sample({i})", space.sample(random.Random(i))) for i in range(count - 1)]
    full = Architecture.from_ops({(s, d): "conv_5" for s, d in space.edges})
    return [*archs, ("all-conv_5", space.validate(full))]


# --- one training step -----------------------------------------------------------------------
def make_step(net: Supernet, opt: torch.optim.Optimizer, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
              strategy: Strategy | None = None, ctx: CandidateContext | None = None,
              extra_loss: Callable[[], torch.Tensor] | None = None, hook_log: list[float] | None = None) -> Step:
    """The trainer's step (minus clipping and bookkeeping) as a closure cycling over ``batches``.

    With ``hook_log``, the time spent inside the strategy's two per-step hooks is appended to it.
    """
    if strategy is not None and ctx is None:
        raise ValueError("a strategy needs its CandidateContext")
    data = itertools.cycle(batches)

    def step() -> None:
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        t0 = time.perf_counter()
        if strategy is not None and ctx is not None:
            strategy.after_backward(ctx)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if strategy is not None and ctx is not None:
            strategy.after_step(ctx)
        if hook_log is not None:
            hook_log.append(t1 - t0 + time.perf_counter() - t2)

    return step


def sgd(params: Any, cfg: SearchConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# --- timing --------------------------------------------------------------------------------------
def race(variants: dict[str, Step], *, rounds: int, warmup: int, budget: float | None = None,
         min_rounds: int = 5) -> dict[str, list[float]]:
    """Interleaved timing: each round runs every variant once, in a rotated order.

    With ``budget`` (seconds), timing stops early once the timed rounds have taken that long
    and at least ``min_rounds`` are done (a busy machine should not make a run endless).
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
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
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
    supernet = Supernet(space, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES).to(device).train()
    opt = sgd(supernet.parameters(), cfg)  # every supernet weight, as the search does
    rows: list[dict[str, Any]] = []
    for label, arch in archs:
        supernet.set_arch(arch)
        alone = supernet.standalone(arch).train()
        variants = {"standalone": make_step(alone, sgd(alone.parameters(), cfg), batches),
                    "supernet": make_step(supernet, opt, batches)}
        times = race(variants, rounds=args.repeats, warmup=args.warmup, budget=args.budget)
        row = compare(times, "standalone", "supernet", resamples=args.bootstrap, seed=len(rows))
        row.update(comparison="supernet/standalone", arch_label=label, arch=str(arch),
                   path_params=supernet.count_parameters(arch), supernet_params=supernet.count_parameters())
        rows.append(row)
        print(_progress(row), file=sys.stderr, flush=True)
    return rows


# --- comparisons 2 and 3: WPL vs naive vs an autograd penalty ----------------------------------------
def consolidated(space: wpl_nas.SearchSpace, arch: Architecture, held_out: TensorDataset, batches: list[Any],
                 cfg: SearchConfig, options: WPLOptions, device: torch.device,
                 earlier: int = 2) -> tuple[Supernet, torch.optim.Optimizer, WPLStrategy]:
    """A supernet and a WPL strategy that trained and consolidated ``earlier`` candidates first."""
    torch.manual_seed(0)
    net = Supernet(space, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES).to(device).train()
    opt = sgd(net.parameters(), cfg)
    wpl = WPLStrategy(net, options).to(device)
    rng = random.Random(10_000)
    previous: list[Architecture] = []
    while len(previous) < earlier:
        cand = space.sample(rng)
        if cand == arch or cand in previous or not any(op != "none" for _, _, op in space.active_edges(cand)):
            continue
        previous.append(cand)
    for trial, cand in enumerate(previous):
        ctx = CandidateContext(net, cand, trial, net.parameters_of(cand), opt)
        net.set_arch(cand)
        wpl.before_candidate(ctx)
        step = make_step(net, opt, batches, wpl, ctx)
        for _ in range(5):  # a little training, so the weights move between candidates
            step()
        opt.zero_grad(set_to_none=True)
        # As CandidateTrainer.consolidate does: held-out batches from a seeded generator.
        gen = torch.Generator().manual_seed(trial)

        def held(batch_size: int, num_batches: int, gen: torch.Generator = gen) -> Iterator[Any]:
            return iterate_batches(held_out, batch_size=batch_size, shuffle=True, generator=gen, limit=num_batches)

        with net.use(cand):
            wpl.after_candidate(CandidateContext(net, cand, trial, net.parameters_of(cand), opt), held)
    net.set_arch(None)
    return net, opt, wpl


def clone(net: Supernet, opt: torch.optim.Optimizer, cfg: SearchConfig) -> tuple[Supernet, torch.optim.Optimizer]:
    """An independent copy of the supernet and its optimiser (momentum included)."""
    net2 = copy.deepcopy(net)
    opt2 = sgd(net2.parameters(), cfg)
    # Deep-copied: load_state_dict keeps same-device tensors as they are, so the copies would
    # otherwise share (and all update) the same momentum buffers.
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    return net2, opt2


def autograd_penalty(net: Supernet, wpl: WPLStrategy, names: list[str], alpha: float) -> Callable[[], torch.Tensor]:
    """``alpha/2 * sum(Omega * (theta - theta*)^2)`` over ``names``, built as a graph at every call."""
    params = dict(net.named_parameters())
    terms = [(params[n], wpl.importance(n).clone(), wpl.anchor_of(n).clone()) for n in names]

    def penalty() -> torch.Tensor:
        total = sum((omega * (p - anchor).square()).sum() for p, omega, anchor in terms)
        return 0.5 * alpha * total  # type: ignore[return-value]

    return penalty


def bench_wpl_arch(space: wpl_nas.SearchSpace, label: str, arch: Architecture, batches: list[Any],
                   held_out: TensorDataset, cfg: SearchConfig, args: argparse.Namespace,
                   device: torch.device) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Race naive, WPL (both forms) and the autograd penalty on one candidate."""
    trial = 2  # the candidate after the two consolidated ones
    base, base_opt, wpl = consolidated(space, arch, held_out, batches, cfg, cfg.wpl, device)
    # The tensors the penalty acts on: on the path, protectable, with Omega > 0 (shared).
    protected = [n for n in base.parameter_names_of(arch)
                 if (cfg.wpl.include_global or ".edges." in n) and bool(wpl.importance(n).any())]
    max_omega = max(float(wpl.importance(n).max()) for n in protected)
    # The gradient form diverges once lr * alpha * max(Omega) is large (see WPLOptions.form);
    # its cost does not depend on alpha, so it (and the autograd penalty, the same maths) runs
    # with alpha capped at 1 / (lr * max Omega), which keeps the timed weights finite.
    alpha_proximal = wpl.strength(trial)
    alpha_gradient = min(alpha_proximal, 1.0 / (cfg.lr * max_omega))
    variants: dict[str, Step] = {}
    nets: dict[str, Supernet] = {}
    hooks: dict[str, list[float]] = {}
    strategies: dict[str, Strategy | None] = {"naive": create_strategy("naive", base).to(device)}
    for form, alpha in (("proximal", alpha_proximal), ("gradient", alpha_gradient)):
        variant = copy.deepcopy(wpl)
        variant.options = dataclasses.replace(wpl.options, form=form, alpha=alpha)
        strategies[f"wpl-{form}"] = variant
    strategies["autograd-penalty"] = None
    for name, strategy in strategies.items():
        net, opt = clone(base, base_opt, cfg)
        net.set_arch(arch)
        ctx = CandidateContext(net, arch, trial, net.parameters_of(arch), opt)
        if strategy is not None:
            strategy.before_candidate(ctx)
        extra = autograd_penalty(net, wpl, protected, alpha_gradient) if name == "autograd-penalty" else None
        hooks[name] = []
        variants[name] = make_step(net, opt, batches, strategy, ctx, extra, hooks[name])
        nets[name] = net

    # The penalty must be live: check it on a throw-away copy before timing.
    probe_net, probe_opt = clone(base, base_opt, cfg)
    probe = copy.deepcopy(wpl)
    probe_net.set_arch(arch)
    probe_ctx = CandidateContext(probe_net, arch, trial, probe_net.parameters_of(arch), probe_opt)
    probe.before_candidate(probe_ctx)
    make_step(probe_net, probe_opt, batches)()  # a first step moves the weights off the anchors
    make_step(probe_net, probe_opt, batches, probe, probe_ctx)()
    info: dict[str, Any] = {"penalty_after_1_step": probe.penalty(probe_ctx) or 0.0}
    if not info["penalty_after_1_step"] > 0:
        raise RuntimeError(f"WPL penalty is not active for {arch}; the comparison would be meaningless")
    info["protected_tensors"] = len(protected)
    info["protected_scalars"] = sum(wpl.importance(n).numel() for n in protected)
    info["path_tensors"] = len(base.parameter_names_of(arch))
    info["alpha"] = {"wpl-proximal": alpha_proximal, "wpl-gradient": alpha_gradient,
                     "autograd-penalty": alpha_gradient}
    info["lr_alpha_max_omega"] = {k: cfg.lr * a * max_omega for k, a in info["alpha"].items()}

    times = race(variants, rounds=args.repeats, warmup=args.warmup, budget=args.budget)
    # Time inside the strategy hooks per step (median over the timed rounds only).
    info["hook_ms"] = {name: statistics.median(log[-len(times[name]):]) * 1e3 for name, log in hooks.items()}
    info["finite_after_run"] = {name: all(bool(torch.isfinite(p).all()) for p in net.parameters())
                                for name, net in nets.items()}
    return times, info


def bench_wpl(space: wpl_nas.SearchSpace, archs: list[tuple[str, Architecture]], batches: list[Any],
              held_out: TensorDataset, cfg: SearchConfig, args: argparse.Namespace,
              device: torch.device) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, arch in archs:
        times, info = bench_wpl_arch(space, label, arch, batches, held_out, cfg, args, device)
        for base_name, other in (("naive", "wpl-proximal"), ("naive", "wpl-gradient"),
                                 ("naive", "autograd-penalty"), ("autograd-penalty", "wpl-gradient")):
            row = compare(times, base_name, other, resamples=args.bootstrap, seed=len(rows))
            row.update(comparison=f"{other}/{base_name}", arch_label=label, arch=str(arch),
                       variant_hook_ms=info["hook_ms"][other], **info)
            rows.append(row)
            print(_progress(row), file=sys.stderr, flush=True)
    return rows


# --- reporting ---------------------------------------------------------------------------------
def _progress(row: dict[str, Any]) -> str:
    return (f"  {row['comparison']:<30} {row['arch_label']:<11} {row['baseline_ms']:7.3f} ms -> "
            f"{row['variant_ms']:7.3f} ms  x{row['ratio']:.3f}")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Geometric mean of each comparison's ratios over the architectures."""
    out = []
    for comp in dict.fromkeys(r["comparison"] for r in rows):
        ratios = [r["ratio"] for r in rows if r["comparison"] == comp]
        gmean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        target = TARGETS.get(comp)
        out.append({"comparison": comp, "geomean_ratio": gmean, "worst_ratio": max(ratios), "target": target,
                    "met": None if target is None else max(ratios) <= target})
    return out


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    lines = ["| comparison | arch | baseline ms (IQR) | variant ms (IQR) | of which hooks ms | ratio | 95% CI "
             "| target |", "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        target = TARGETS.get(r["comparison"])
        hooks = f"{r['variant_hook_ms']:.3f}" if r["variant"].startswith("wpl") else "—"
        verdict = "info" if target is None else f"≤ {target:.2f} {'✓' if r['ratio'] <= target else '✗'}"
        lines.append(f"| {r['comparison']} | {r['arch_label']} | {r['baseline_ms']:.3f} ({r['baseline_iqr_ms']:.3f}) "
                     f"| {r['variant_ms']:.3f} ({r['variant_iqr_ms']:.3f}) | {hooks} | {r['ratio']:.3f} "
                     f"| {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} | {verdict} |")
    lines += ["", "| comparison | geomean ratio | worst ratio | target | met |", "|---|---:|---:|---|---|"]
    for s in summary:
        goal = "info" if s["target"] is None else f"≤ {s['target']:.2f}"
        met = "—" if s["met"] is None else ("yes" if s["met"] else "no")
        lines.append(f"| {s['comparison']} | {s['geomean_ratio']:.3f} | {s['worst_ratio']:.3f} | {goal} | {met} |")
    return "\n".join(lines)


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "wpl_nas": wpl_nas.__version__, "platform": platform.platform(),
            "cpu": cpu, "device": str(device), "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(), "load_average_at_start": _load(),
            "batch_size": args.batch_size, "budget_s": args.budget,
            "repeats": args.repeats, "warmup": args.warmup, "architectures": args.archs, "data": args.data,
            "quick": args.quick}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: fewer rounds and architectures (< 30 s)")
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
    p.add_argument("--pool", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap resamples for the CI (default 1000; quick 100)")
    p.add_argument("--only", choices=("supernet", "wpl"), default=None, help="run one comparison group only")
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
    cfg = SearchConfig()  # lr, momentum, weight decay and WPL options: the search's defaults
    space = load_space(SPACE)
    archs = architectures(space, args.archs)
    batches, held_out = make_batches(args, device)
    rows: list[dict[str, Any]] = []
    if args.only in (None, "supernet"):
        rows += bench_supernet(space, archs, batches, cfg, args, device)
    if args.only in (None, "wpl"):
        rows += bench_wpl(space, archs, batches, held_out, cfg, args, device)
    summary = summarise(rows)
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = _load()
    print(f"## Step-time ratios ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} threads; "
          f"{env['cpu']}; batch {args.batch_size}; up to {args.repeats} rounds; {env['seconds']} s; "
          f"load average {env['load_average_at_start']} -> {env['load_average_at_end']})\n")
    print(markdown(rows, summary))
    print("\nArchitectures: " + "; ".join(f"{label} = {arch}" for label, arch in archs))
    for r in rows:
        if r["comparison"] == "wpl-proximal/naive":
            print(f"- {r['arch_label']}: penalty live on {r['protected_tensors']}/{r['path_tensors']} path tensors "
                  f"({r['protected_scalars']:,} scalars); alpha proximal {r['alpha']['wpl-proximal']:g}, "
                  f"gradient/autograd {r['alpha']['wpl-gradient']:.3g}")
            broken = [name for name, ok in r["finite_after_run"].items() if not ok]
            if broken:
                print(f"  WARNING: non-finite weights after the run in {', '.join(broken)}: timings may be off")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "summary": summary, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
