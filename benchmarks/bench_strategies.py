#!/usr/bin/env python
"""What each consolidation strategy costs: per-step overhead, importance estimation, memory.

Every strategy in ``wpl_nas.STRATEGIES`` at run time is measured (one registered later is picked
up without a change here), on the ``mnist1d`` space with MNIST-1D data:

1. ``step``: one training step of a candidate under each strategy, over the same step under
   ``naive``. Before it, two earlier candidates sharing cell ops with it were trained (a few
   steps) and consolidated by that strategy, so its protection is live. Each quadratic strategy
   (a :class:`~wpl_nas.strategies.QuadraticStrategy`) runs in both forms, ``proximal`` and
   ``gradient``, and a third time as ``autograd``: its own hooks with strength 0 (so SI still
   tracks its path integral) plus ``loss += α/2·Σ Ω(θ−θ*)²`` over the same tensors, built as a
   graph every step and differentiated by autograd. Targets for the quadratic family: each form
   ≤ 1.05× ``naive``, and faster than ``autograd``. The gradient form and ``autograd`` (the same
   maths) run with α capped at ``1 / (lr · max Ω)`` so they do not diverge while timed; their
   cost does not depend on α.
2. ``importance``: the per-sample empirical Fisher E[g²] of a path on the same held-out batches,
   with ``per_sample_grads`` (torch.func) and with ``per_sample_grads_loop``; the two must agree.
   The batch approximation (``per_sample=False``) is timed for reference.
3. ``memory``: the bytes a strategy holds after 10 and after 100 consolidated candidates on a
   small space (2 steps per candidate, one tiny held-out batch per estimate): tensors of its
   ``state_dict()``, its extra state, and any other tensor its attributes keep. It must not grow
   with the count (a bounded protected set may grow up to its capacity, then stays flat).

Timing is ``bench_step.py``'s harness: each variant has its own supernet, optimiser and
strategy and sees the same batches; the variants run in interleaved rounds in one process (one
step each per round, the order rotated), timed with ``time.perf_counter`` with the garbage
collector paused, after a warm-up. A ratio is a median over a median, with a 95% interval from a
paired bootstrap over rounds. One step is the trainer's: ``zero_grad``, forward, cross-entropy,
backward, ``after_backward``, ``optimizer.step()`` (SGD with the search's defaults),
``after_step``; no gradient clipping or bookkeeping.

Usage::

    python benchmarks/bench_strategies.py                  # full run (~15 min on 2 busy cores)
    python benchmarks/bench_strategies.py --quick          # smoke run, < 1 min
    python benchmarks/bench_strategies.py --device cuda    # on a GPU (the targets are for CPU)
    python benchmarks/bench_strategies.py --json out.json  # also write every figure as JSON

The script reports; it never fails on a slow ratio. The exit status is 1 only if a strategy
could not be run at all (the report says which and why).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import pickle
import random
import statistics
import sys
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step.py, next to this file

import bench_step
from bench_step import INPUT_SHAPE, NUM_CLASSES, SPACE, Step, architectures, compare, device_sync, race, sgd

import wpl_nas
from wpl_nas import Architecture, SearchConfig, SearchSpace, Supernet, load_space
from wpl_nas.data import iterate_batches
from wpl_nas.evaluation import accuracy
from wpl_nas.strategies import STRATEGIES, Batches, CandidateContext, QuadraticStrategy, Strategy, create_strategy
from wpl_nas.strategies.importance import empirical_fisher, per_sample_grads, per_sample_grads_loop

QUADRATIC_TARGET = 1.05
FORMS = ("proximal", "gradient")
AUTOGRAD = "autograd"
BASELINE = "naive"
#: vmap and loop Fishers agree if their largest difference is below this share of the largest value.
AGREE_RTOL = 1e-4
#: A small space (the memory benchmark's, and ``--quick``'s): mnist1d's cell grammar at 8/16 channels,
#: one cell per stage, on the same data.
SMALL_SPACE: dict[str, Any] = {
    "name": "small1d", "description": "mnist1d's cell grammar at 8/16 channels, one cell per stage",
    "citation": "wpl-nas benchmarks", "dims": 1,
    "skeleton": {"stem_channels": 8, "stages": [{"channels": 8, "cells": 1}, {"channels": 16, "cells": 1}]},
    "cell": {"nodes": 4, "edges": "all", "ops": ["none", "skip_connect", "conv_5"]},
}
Batch = tuple[torch.Tensor, torch.Tensor]


# --- data ------------------------------------------------------------------------------------------
@dataclass
class Data:
    """MNIST-1D on the device: training batches (cycled), the held-out split, a scoring subset."""

    batches: list[Batch]
    held_out: TensorDataset
    eval_x: torch.Tensor
    eval_y: torch.Tensor


def load_data(args: argparse.Namespace, device: torch.device) -> Data:
    bundle = wpl_nas.load_dataset("mnist1d", data_dir=args.data_dir)
    assert isinstance(bundle.train, TensorDataset) and isinstance(bundle.val, TensorDataset)
    x, y = (t.to(device) for t in bundle.train.tensors)
    b = args.batch_size
    batches = [(x[i: i + b], y[i: i + b]) for i in range(0, b * args.pool, b)]
    held_out = TensorDataset(*(t.to(device) for t in bundle.val.tensors))
    vx, vy = held_out.tensors
    return Data(batches, held_out, vx[:256], vy[:256])


def held_out_batches(data: TensorDataset, seed: int, *, max_batches: int = 0, max_size: int = 0) -> Batches:
    """``held_out(batch_size, num_batches)`` as ``CandidateTrainer.consolidate`` builds it (seeded per
    candidate); ``max_batches``/``max_size`` (0: no cap) shrink what strategies ask for, for speed."""
    gen = torch.Generator().manual_seed(seed)

    def held(batch_size: int, num_batches: int) -> Iterator[Batch]:
        size = min(batch_size, max_size) if max_size else batch_size
        count = min(num_batches, max_batches) if max_batches else num_batches
        return iterate_batches(data, batch_size=size, shuffle=True, generator=gen, limit=count)

    return held


# --- the trainer's loop, piece by piece -----------------------------------------------------------
def trainer_step(ctx: CandidateContext, strategy: Strategy, batches: Sequence[Batch], *,
                 extra_loss: Callable[[], torch.Tensor] | None = None, hook_log: list[float] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> Step:
    """One step of ``CandidateTrainer.train`` (minus clipping and bookkeeping) as a closure.

    It cycles over ``batches``, one epoch being one pass, and keeps ``ctx.epoch``, ``ctx.step`` and
    ``ctx.batch`` up to date as the trainer does (HAT anneals by them, distillation reads the batch).
    With ``hook_log``, the seconds (by ``clock``) spent in ``after_backward`` and ``after_step`` are appended.
    """
    net, opt = ctx.supernet, ctx.optimizer
    sync = device_sync(next(net.parameters()).device)
    counter = itertools.count()
    n = len(batches)

    def step() -> None:
        i = next(counter)
        x, y = batches[i % n]
        ctx.epoch, ctx.step, ctx.batch = i // n, i % n, (x, y)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        t0 = clock()
        strategy.after_backward(ctx)
        t1 = clock()
        opt.step()
        t2 = clock()
        strategy.after_step(ctx)
        sync()
        if hook_log is not None:
            hook_log.append(t1 - t0 + clock() - t2)

    return step


def train_candidate(net: Supernet, opt: torch.optim.Optimizer, strategy: Strategy, arch: Architecture, trial: int,
                    batches: Sequence[Batch], steps: int) -> None:
    """``CandidateTrainer.train`` for one epoch of ``steps`` steps."""
    ctx = CandidateContext(net, arch, trial, net.parameters_of(arch), opt, epochs=1, steps_per_epoch=steps)
    net.set_arch(arch)
    net.train()
    strategy.before_candidate(ctx)
    step = trainer_step(ctx, strategy, [batches[i % len(batches)] for i in range(steps)])
    for _ in range(steps):
        step()
    opt.zero_grad(set_to_none=True)


def consolidate(net: Supernet, opt: torch.optim.Optimizer, strategy: Strategy, arch: Architecture, trial: int,
                data: Data, *, steps: int, max_batches: int = 0, max_size: int = 0, eval_size: int = 256) -> None:
    """``CandidateTrainer.consolidate``: score the candidate (bounded strategies keep the best), then
    ``after_candidate`` on seeded held-out batches."""
    ctx = CandidateContext(net, arch, trial, net.parameters_of(arch), opt, epochs=1, steps_per_epoch=steps)
    ctx.score = accuracy(net, arch, data.eval_x[:eval_size], data.eval_y[:eval_size], batch_size=256)
    held = held_out_batches(data.held_out, trial, max_batches=max_batches, max_size=max_size)
    with net.use(arch):
        strategy.after_candidate(ctx, held)


def new_supernet(space: SearchSpace, device: torch.device) -> Supernet:
    torch.manual_seed(0)  # every variant starts from the same weights
    return Supernet(space, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES).to(device).train()


# --- 1. step overhead -------------------------------------------------------------------------------
@dataclass
class Variant:
    """One timed way of training the candidate: a strategy (and form), on its own supernet."""

    strategy: str
    form: str | None  # proximal | gradient | autograd for the quadratic family, else None
    net: Supernet
    step: Step
    probe: Callable[[], float | None]  # the penalty now (is the protection live?)
    hooks: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.strategy if self.form is None else f"{self.strategy}/{self.form}"


def earlier_candidates(space: SearchSpace, arch: Architecture, count: int, seed: int) -> list[Architecture]:
    """``count`` distinct seeded samples other than ``arch`` that share a cell op with parameters
    with it, so that what they consolidate is on ``arch``'s path."""
    net = Supernet(space, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES)
    mine = {n for n in net.parameter_names_of(arch) if ".edges." in n}
    rng = random.Random(seed)
    found: list[Architecture] = []
    for _ in range(100_000):
        cand = space.sample(rng)
        if cand != arch and cand not in found and mine & set(net.parameter_names_of(cand)):
            found.append(cand)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} candidates share a parameterised op with {arch}")


def consolidated(name: str, space: SearchSpace, earlier: list[Architecture], data: Data, cfg: SearchConfig,
                 args: argparse.Namespace, device: torch.device) -> tuple[Supernet, torch.optim.Optimizer, Strategy]:
    """A supernet, its optimiser and strategy ``name`` after training and consolidating ``earlier``."""
    net = new_supernet(space, device)
    opt = sgd(net.parameters(), cfg)
    strategy = create_strategy(name, net, cfg).to(device)  # the search's default options
    for trial, cand in enumerate(earlier):
        train_candidate(net, opt, strategy, cand, trial, data.batches, args.earlier_steps)
        consolidate(net, opt, strategy, cand, trial, data, steps=args.earlier_steps,
                    max_batches=args.held_out_batches, max_size=args.held_out_size)
    net.set_arch(None)
    return net, opt, strategy


def clone(net: Supernet, opt: torch.optim.Optimizer, strategy: Strategy,
          cfg: SearchConfig) -> tuple[Supernet, torch.optim.Optimizer, Strategy]:
    """Independent copies (momentum included); net and strategy are copied together so that any
    reference the strategy keeps to the supernet points at the copy."""
    net2, strategy2 = copy.deepcopy((net, strategy))
    opt2 = sgd(net2.parameters(), cfg)
    # Deep-copied: load_state_dict keeps same-device tensors as they are, so the copies would
    # otherwise share (and all update) the same momentum buffers.
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    return net2, opt2, strategy2


def fix_strength(strategy: QuadraticStrategy, alpha: float) -> None:
    """Make ``strategy.strength`` return ``alpha`` (0: the strategy applies no penalty itself)."""
    strategy.strength = lambda trial_index: alpha  # type: ignore[method-assign]


def autograd_penalty(net: Supernet, strategy: QuadraticStrategy, names: list[str],
                     alpha: float) -> Callable[[], torch.Tensor]:
    """``α/2 · Σ Ω (θ − θ*)²`` over ``names`` with per-tensor copies of Ω and θ*, built at every call."""
    params = dict(net.named_parameters())
    terms = [(params[n], strategy.importance(n).clone(), strategy.anchor_of(n).clone()) for n in names]

    def penalty() -> torch.Tensor:
        total = sum((omega * (p - anchor).square()).sum() for p, omega, anchor in terms)
        return 0.5 * alpha * total  # type: ignore[return-value]

    return penalty


def with_gradient(net: Supernet, arch: Architecture, batch: Batch) -> set[str]:
    """Names of ``arch``'s tensors that get a gradient (a dead branch gets none, and the strategy
    stops pulling it after the first backward, so the autograd penalty leaves it out too)."""
    with net.use(arch):
        F.cross_entropy(net(batch[0]), batch[1]).backward()
    names = {n for n, p in net.parameters_of(arch).items() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return names


def start_candidate(net: Supernet, opt: torch.optim.Optimizer, strategy: Strategy, arch: Architecture, trial: int,
                    batches: Sequence[Batch], name: str, form: str | None,
                    extra_loss: Callable[[], torch.Tensor] | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> Variant:
    """``before_candidate`` on the timed candidate; the variant's step and penalty probe."""
    # A long epoch: HAT's gates keep annealing and nothing ends the candidate while it is timed.
    ctx = CandidateContext(net, arch, trial, net.parameters_of(arch), opt, epochs=10**9,
                           steps_per_epoch=len(batches))
    net.set_arch(arch)
    net.train()
    strategy.before_candidate(ctx)
    hooks: list[float] = []
    step = trainer_step(ctx, strategy, batches, extra_loss=extra_loss, hook_log=hooks, clock=clock)
    if extra_loss is not None:
        def probe() -> float | None:
            with torch.no_grad():
                return float(extra_loss())
    else:
        def probe() -> float | None:
            return strategy.penalty(ctx)
    return Variant(name, form, net, step, probe, hooks)


def quadratic_variants(name: str, net: Supernet, opt: torch.optim.Optimizer, strategy: QuadraticStrategy,
                       arch: Architecture, trial: int, data: Data, cfg: SearchConfig,
                       clock: Callable[[], float]) -> list[Variant]:
    """The proximal, gradient and autograd variants of one consolidated quadratic strategy."""
    live = with_gradient(net, arch, data.batches[0])
    protected = [n for n in net.parameter_names_of(arch)
                 if n in live and strategy.protectable(n) and bool(strategy.importance(n).any())]
    if not protected:
        raise RuntimeError(f"{name}: nothing on {arch}'s path is protected; the comparison would be meaningless")
    alpha = strategy.strength(trial)
    max_omega = max(float(strategy.importance(n).max()) for n in protected)
    alpha_gradient = min(alpha, 1.0 / (cfg.lr * max_omega))
    info = {"alpha": {"proximal": alpha, "gradient": alpha_gradient, AUTOGRAD: alpha_gradient},
            "protected_tensors": len(protected), "path_tensors": len(net.parameter_names_of(arch)),
            "protected_scalars": sum(strategy.importance(n).numel() for n in protected)}
    variants = []
    for form in (*FORMS, AUTOGRAD):
        v_net, v_opt, v_strategy = clone(net, opt, strategy, cfg)
        assert isinstance(v_strategy, QuadraticStrategy)
        extra = None
        if form == AUTOGRAD:
            fix_strength(v_strategy, 0.0)
            extra = autograd_penalty(v_net, strategy, protected, alpha_gradient)
        else:
            v_strategy.options = dataclasses.replace(v_strategy.options, form=form)
            fix_strength(v_strategy, info["alpha"][form])
        variant = start_candidate(v_net, v_opt, v_strategy, arch, trial, data.batches, name, form, extra, clock)
        variant.info = info
        variants.append(variant)
    return variants


def bench_steps(names: list[str], space: SearchSpace, archs: list[tuple[str, Architecture]], data: Data,
                cfg: SearchConfig, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per architecture, one race per strategy: ``naive`` against that strategy's variants.

    Small races keep a round short, so the steps compared within it see the same machine state,
    and a slow strategy (distillation) does not thin out the rounds of the others.
    """
    rows: list[dict[str, Any]] = []
    versus: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    naive_ms: dict[str, float] = {}
    for a, (label, arch) in enumerate(archs):
        earlier = earlier_candidates(space, arch, 2, seed=10_000 + a)
        trial = len(earlier)
        net, opt, strategy = consolidated(BASELINE, space, earlier, data, cfg, args, device)
        naive = start_candidate(net, opt, strategy, arch, trial, data.batches, BASELINE, None, clock=args.clock)
        naive_times: list[float] = []
        for name in names:
            if name == BASELINE:
                continue
            try:
                net, opt, strategy = consolidated(name, space, earlier, data, cfg, args, device)
                if isinstance(strategy, QuadraticStrategy):
                    variants = quadratic_variants(name, net, opt, strategy, arch, trial, data, cfg, args.clock)
                else:
                    variants = [start_candidate(net, opt, strategy, arch, trial, data.batches, name, None,
                                                clock=args.clock)]
            except Exception as exc:  # another strategy's bug must not hide every other figure
                traceback.print_exc(file=sys.stderr)
                failures.append({"strategy": name, "arch_label": label, "error": f"{type(exc).__name__}: {exc}"})
                continue
            group = {BASELINE: naive.step, **{v.label: v.step for v in variants}}
            times = race(group, rounds=args.repeats, warmup=args.warmup, budget=args.budget, clock=args.clock)
            naive_times += times[BASELINE]
            for i, v in enumerate(variants):
                value = v.probe()
                v.info = {**v.info, "penalty_after_warmup": value, "live": None if value is None else value > 0,
                          "hook_ms": statistics.median(v.hooks[-len(times[v.label]):]) * 1e3,
                          "finite_after_run": all(bool(torch.isfinite(p).all()) for p in v.net.parameters())}
                row = compare(times, BASELINE, v.label, resamples=args.bootstrap, seed=len(rows))
                target = QUADRATIC_TARGET if v.form in FORMS else None
                rows.append({**row, "strategy": v.strategy, "form": v.form, "arch_label": label, "arch": str(arch),
                             "target": target, **v.info})
                print(f"  {label:<10} {v.label:<20} x{row['ratio']:.3f} vs naive ({row['variant_ms']:.2f} vs "
                      f"{row['baseline_ms']:.2f} ms, hooks {v.info['hook_ms']:.2f} ms, {row['rounds']} rounds)",
                      file=sys.stderr, flush=True)
                if v.form in FORMS:
                    row = compare(times, f"{v.strategy}/{AUTOGRAD}", v.label, resamples=args.bootstrap, seed=i)
                    versus.append({**row, "strategy": v.strategy, "form": v.form, "arch_label": label})
            del variants, group, times, net, opt, strategy
        naive_ms[label] = statistics.median(naive_times) * 1e3 if naive_times else float("nan")
    return {"architectures": [{"label": label, "arch": str(arch)} for label, arch in archs],
            "naive_ms": naive_ms, "rows": rows, "versus_autograd": versus, "failures": failures,
            "summary": summarise(rows, key=lambda r: r["ratio"] <= QUADRATIC_TARGET),
            "summary_versus_autograd": summarise(versus, key=lambda r: r["ratio"] < 1.0)}


def summarise(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Per (strategy, form): geometric mean and worst ratio over the architectures, and whether every
    architecture meets ``key``."""
    out = []
    for strategy, form in dict.fromkeys((r["strategy"], r["form"]) for r in rows):
        mine = [r for r in rows if (r["strategy"], r["form"]) == (strategy, form)]
        ratios = [r["ratio"] for r in mine]
        gmean = math.exp(statistics.fmean(math.log(x) for x in ratios))
        out.append({"strategy": strategy, "form": form, "geomean_ratio": gmean, "worst_ratio": max(ratios),
                    "met": all(key(r) for r in mine)})
    return out


# --- 2. importance estimation -------------------------------------------------------------------------
def bench_importance(space: SearchSpace, archs: list[tuple[str, Architecture]], data: Data, cfg: SearchConfig,
                     args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    size = cfg.sections["wpl"].fisher_batch_size
    hx, hy = data.held_out.tensors
    batches = [(hx[i * size: (i + 1) * size], hy[i * size: (i + 1) * size]) for i in range(args.fisher_batches)]
    sync = device_sync(device)
    for label, arch in archs:
        net = new_supernet(space, device)
        net.set_arch(arch)
        names = net.parameter_names_of(arch)
        params = dict(net.named_parameters())

        def fisher(grads_of: Callable[..., list[torch.Tensor]], names: list[str] = names,
                   net: Supernet = net, params: dict[str, torch.nn.Parameter] = params) -> list[torch.Tensor]:
            # E[g²]: the mean over samples of squared per-sample gradients, averaged over the batches.
            total = [torch.zeros_like(params[n]) for n in names]
            for x, y in batches:
                torch._foreach_add_(total, [g.square().mean(0) for g in grads_of(net, names, x, y)])
            torch._foreach_div_(total, float(len(batches)))
            sync()
            return total

        def batch_fisher(names: list[str] = names, net: Supernet = net) -> list[torch.Tensor]:
            out = empirical_fisher(net, names, lambda bs, nb: iter(batches), batch_size=size, batches=len(batches),
                                   per_sample=False)
            sync()
            return out

        vmap, loop = fisher(per_sample_grads), fisher(per_sample_grads_loop)
        library = empirical_fisher(net, names, lambda bs, nb: iter(batches), batch_size=size, batches=len(batches),
                                   per_sample=True)
        scale = max(float(t.abs().max()) for t in loop)
        max_diff = max(float((a - b).abs().max()) for a, b in zip(vmap, loop, strict=True))
        library_diff = max(float((a - b).abs().max()) for a, b in zip(library, vmap, strict=True))
        times = race({"loop": lambda f=fisher: f(per_sample_grads_loop), "vmap": lambda f=fisher: f(per_sample_grads),
                      "batch": batch_fisher}, rounds=args.importance_repeats, warmup=1, budget=args.importance_budget,
                     min_rounds=3, clock=args.clock)
        row = compare(times, "loop", "vmap", resamples=args.bootstrap, seed=len(rows))
        row.update(arch_label=label, arch=str(arch), tensors=len(names), scalars=sum(params[n].numel() for n in names),
                   batches=len(batches), batch_size=size, batch_ms=statistics.median(times["batch"]) * 1e3,
                   max_abs_diff=max_diff, max_value=scale, max_rel_diff=max_diff / scale if scale else 0.0,
                   library_vs_vmap_max_diff=library_diff)
        row["agree"] = row["max_rel_diff"] <= AGREE_RTOL and library_diff <= AGREE_RTOL * scale
        rows.append(row)
        print(f"  importance {label}: loop {row['baseline_ms']:.1f} ms, vmap {row['variant_ms']:.1f} ms "
              f"(x{row['ratio']:.3f}); max rel diff {row['max_rel_diff']:.2e}", file=sys.stderr, flush=True)
    return rows


# --- 3. memory -----------------------------------------------------------------------------------------
def _storage(t: torch.Tensor) -> tuple[str, int, int]:
    s = t.untyped_storage()
    return str(t.device), s.data_ptr(), s.nbytes()


def _reachable_tensors(root: Strategy) -> list[torch.Tensor]:
    """Every tensor reachable from the strategy's attributes (through containers and plain objects),
    not entering other modules (the supernet), optimisers or weak references."""
    own = {id(m) for m in root.modules()}
    found: list[torch.Tensor] = []
    seen: set[int] = set()
    stack: list[Any] = [root]
    leaves = (str, bytes, int, float, bool, type, types.ModuleType, types.FunctionType, types.MethodType,
              weakref.ref, torch.optim.Optimizer, torch.Generator, torch.device, torch.dtype)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, leaves):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, torch.nn.Module):
            if id(obj) in own:
                stack.extend(vars(obj).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def strategy_bytes(strategy: Strategy, net: Supernet, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes the strategy holds: ``state`` (tensors of its state dict), ``extra`` (its extra state:
    the tensor's bytes, or the pickled size if it is not a tensor) and ``held`` (other tensors its
    attributes keep, e.g. per-candidate constants; storage not already counted, nor the supernet's
    own weights, gradients and optimiser state)."""
    state = strategy.state_dict()
    out = {"state": 0, "extra": 0, "held": 0}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] == "_extra_state":
            out["extra"] += value.numel() * value.element_size() if isinstance(value, torch.Tensor) \
                else len(pickle.dumps(value))
        elif isinstance(value, torch.Tensor):
            out["state"] += value.numel() * value.element_size()
    known = {_storage(t) for t in state.values() if isinstance(t, torch.Tensor)}
    for p in net.parameters():
        known.add(_storage(p))
        if p.grad is not None:
            known.add(_storage(p.grad))
    known |= {_storage(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    held = {_storage(t) for t in _reachable_tensors(strategy)} - known
    out["held"] = sum(nbytes for _, _, nbytes in held)
    return out


def bench_memory(names: list[str], data: Data, cfg: SearchConfig, args: argparse.Namespace,
                 device: torch.device) -> list[dict[str, Any]]:
    space = SearchSpace.from_dict(SMALL_SPACE)
    counts = sorted(set(args.memory_counts))
    x, y = data.batches[0]
    batches = [(x[i: i + 16], y[i: i + 16]) for i in range(0, 64, 16)]
    steps = 2
    rows = []
    for name in names:
        start = time.perf_counter()
        try:
            net = new_supernet(space, device)
            opt = sgd(net.parameters(), cfg)
            strategy = create_strategy(name, net, cfg).to(device)
            rng = random.Random(0)
            sizes: dict[int, dict[str, int]] = {}
            for trial in range(counts[-1]):
                arch = space.sample(rng)
                train_candidate(net, opt, strategy, arch, trial, batches, steps)
                consolidate(net, opt, strategy, arch, trial, data, steps=steps, max_batches=1, max_size=16,
                            eval_size=64)
                if trial + 1 in counts:
                    sizes[trial + 1] = strategy_bytes(strategy, net, opt)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rows.append({"strategy": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        first, last = sizes[counts[0]], sizes[counts[-1]]
        total = {c: sum(s.values()) for c, s in sizes.items()}
        tensors_flat = (first["state"], first["held"]) == (last["state"], last["held"])
        extra_delta = last["extra"] - first["extra"]
        # The extra state names the protected candidates and their scores: its length wobbles with
        # their names and digits, and grows while a bounded set fills up; growing with the count
        # would show as a multiple.
        if total[counts[0]] == total[counts[-1]]:
            verdict = "flat"
        elif tensors_flat and last["extra"] <= 1.5 * first["extra"] + 64:
            verdict = f"flat tensors; extra state {extra_delta:+d} B"
        else:
            verdict = "grows"
        rows.append({"strategy": name, "counts": counts, "bytes": {str(c): s for c, s in sizes.items()},
                     "total": {str(c): t for c, t in total.items()},
                     # Nothing held at all (naive) is as flat as it gets: ratio 1.
                     "ratio": total[counts[-1]] / total[counts[0]] if total[counts[0]]
                     else float(total[counts[-1]] == 0),
                     "tensors_flat": tensors_flat, "extra_delta": extra_delta, "verdict": verdict,
                     "bounded_set": hasattr(strategy, "protected"), "seconds": round(time.perf_counter() - start, 1)})
        print(f"  memory {name}: {total[counts[0]]:,} B -> {total[counts[-1]]:,} B ({verdict})", file=sys.stderr,
              flush=True)
    return rows


# --- reporting ------------------------------------------------------------------------------------------
def _cell(r: dict[str, Any] | None) -> str:
    return "—" if r is None else f"{r['ratio']:.3f} ({r['ci95'][0]:.2f}–{r['ci95'][1]:.2f})"


def _find(rows: list[dict[str, Any]], strategy: str, form: str | None, label: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["strategy"], r["form"], r["arch_label"]) == (strategy, form, label)), None)


def markdown_steps(res: dict[str, Any]) -> str:
    labels = [a["label"] for a in res["architectures"]]
    naive = [res["naive_ms"][k] for k in labels]
    head = " | ".join(labels)
    lines = ["Step time over `naive`'s, per architecture: ratio of medians (95% CI). Hooks: median ms inside "
             "`after_backward` + `after_step` (range over architectures).", "",
             f"| strategy | form | {head} | geomean | worst | hooks ms | live | target |",
             "|---|---|" + "---:|" * len(labels) + "---:|---:|---:|---|---|",
             f"| naive | — | {' | '.join(f'{ms:.2f} ms' for ms in naive)} | | | | | baseline |"]
    for s in res["summary"]:
        mine = [r for r in res["rows"] if (r["strategy"], r["form"]) == (s["strategy"], s["form"])]
        hooks = [r["hook_ms"] for r in mine]
        live = {r["live"] for r in mine}
        live_text = "—" if live == {None} else ("yes" if live == {True} else "NO")
        cells = " | ".join(_cell(_find(res["rows"], s["strategy"], s["form"], k)) for k in labels)
        target = mine[0]["target"]
        verdict = "info" if target is None else f"≤ {target:.2f} {'✓' if s['met'] else '✗'}"
        lines.append(f"| {s['strategy']} | {s['form'] or '—'} | {cells} | {s['geomean_ratio']:.3f} | "
                     f"{s['worst_ratio']:.3f} | {min(hooks):.2f}–{max(hooks):.2f} | {live_text} | {verdict} |")
    lines += ["", "Quadratic family, our form over the autograd penalty (< 1: ours is faster):", "",
              f"| strategy | form | {head} | geomean | worst | faster |",
              "|---|---|" + "---:|" * len(labels) + "---:|---:|---|"]
    for s in res["summary_versus_autograd"]:
        cells = " | ".join(_cell(_find(res["versus_autograd"], s["strategy"], s["form"], k)) for k in labels)
        lines.append(f"| {s['strategy']} | {s['form']} | {cells} | {s['geomean_ratio']:.3f} | {s['worst_ratio']:.3f} "
                     f"| {'yes' if s['met'] else 'NO'} |")
    for f in res["failures"]:
        lines.append(f"\n**{f['strategy']} failed on {f['arch_label']}:** `{f['error']}`")
    notes = []
    for label in labels:
        quad = {r["strategy"]: r for r in res["rows"] if r["arch_label"] == label and r["form"] == "proximal"}
        if quad:
            notes.append(f"- {label}: " + "; ".join(
                f"{k} {r['protected_tensors']}/{r['path_tensors']} tensors, α {r['alpha']['proximal']:g}"
                + (f" (gradient {r['alpha']['gradient']:.3g})" if r["alpha"]["gradient"] < r["alpha"]["proximal"]
                   else "") for k, r in quad.items()))
    broken = sorted({f"{r['strategy']}/{r['form']}" if r["form"] else r["strategy"]
                     for r in res["rows"] if not r["finite_after_run"]})
    if notes:
        lines += ["", "Penalty live on (protected / path tensors) and α:", *notes]
    if broken:
        lines.append(f"\nWARNING: non-finite weights after the run in {', '.join(broken)}: timings may be off")
    return "\n".join(lines)


def markdown_importance(rows: list[dict[str, Any]]) -> str:
    lines = ["Per-sample empirical Fisher of the path on the same held-out batches: `per_sample_grads` (vmap) "
             "over `per_sample_grads_loop`; the batch approximation for reference.", "",
             "| arch | tensors (scalars) | batches | loop ms | vmap ms | vmap/loop | 95% CI | batch-approx ms "
             "| max rel. diff | agree |", "|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['arch_label']} | {r['tensors']} ({r['scalars']:,}) | {r['batches']} × {r['batch_size']} "
                     f"| {r['baseline_ms']:.1f} | {r['variant_ms']:.1f} | {r['ratio']:.3f} "
                     f"| {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} | {r['batch_ms']:.1f} | {r['max_rel_diff']:.1e} "
                     f"| {'yes' if r['agree'] else 'NO'} |")
    return "\n".join(lines)


def markdown_memory(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return "\n".join(f"**{r['strategy']} failed:** `{r['error']}`" for r in rows)
    a, b = (str(c) for c in (ok[0]["counts"][0], ok[0]["counts"][-1]))
    lines = [f"Bytes held after {a} and {b} consolidated candidates (state-dict tensors, extra state, other "
             "tensors kept in attributes).", "",
             f"| strategy | state @{a} | state @{b} | extra @{a} | extra @{b} | other @{a} | other @{b} "
             f"| total @{b} / @{a} | verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | failed: `{r['error']}` |||||||| |")
            continue
        x, y = r["bytes"][a], r["bytes"][b]
        lines.append(f"| {r['strategy']} | {x['state']:,} | {y['state']:,} | {x['extra']:,} | {y['extra']:,} "
                     f"| {x['held']:,} | {y['held']:,} | {r['ratio']:.3f} | {r['verdict']} |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: one architecture, few rounds (< 1 min)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (the targets are for cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: on a shared machine, threads wait on each other)")
    p.add_argument("--data-dir", default="data", help="where MNIST-1D is generated and cached")
    p.add_argument("--only", choices=("step", "importance", "memory"), action="append", default=None,
                   help="run only this part (repeatable; default all three)")
    p.add_argument("--space", choices=("mnist1d", "small"), default=None,
                   help="space of the step and importance parts: mnist1d, or a small one with 8/16 channels "
                        "(default mnist1d; quick small). Memory always uses the small one.")
    p.add_argument("--strategies", default=None,
                   help="comma-separated subset of the registered strategies (default: all; naive is always run)")
    p.add_argument("--archs", type=int, default=None,
                   help="architectures, from sample(0), sample(1), all-conv_5 (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pool", type=int, default=8, help="distinct training batches cycled through")
    p.add_argument("--earlier-steps", type=int, default=None,
                   help="training steps of each earlier candidate (default 5; quick 3)")
    p.add_argument("--held-out-batches", type=int, default=None,
                   help="cap on the held-out batches a consolidation may use (default 0: the strategy's own; quick 2)")
    p.add_argument("--held-out-size", type=int, default=None,
                   help="cap on the size of those batches (default 0: the strategy's own; quick 32)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per race (one strategy against naive on one architecture; default 200; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 10; quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="wall seconds of timed rounds per race before stopping early (default 30; quick 1.5; 0: none)")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="what a step's time is: cpu (the thread's CPU time, time.thread_time: other processes' "
                        "time slices left out), wall (time.perf_counter), or auto: cpu on one CPU thread, else wall")
    p.add_argument("--fisher-batches", type=int, default=None,
                   help="held-out batches of the timed Fisher (default 2; quick 1)")
    p.add_argument("--importance-repeats", type=int, default=None, help="timed Fisher rounds (default 15; quick 3)")
    p.add_argument("--importance-budget", type=float, default=None,
                   help="seconds of timed Fisher rounds per architecture (default 40; quick 3)")
    p.add_argument("--memory-counts", type=int, nargs="+", default=None, metavar="N",
                   help="consolidated candidates after which memory is measured (default 10 100; quick 3 6)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; quick 100)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"space": ("small", SPACE), "archs": (1, 3), "earlier_steps": (3, 5), "held_out_batches": (2, 0),
                "held_out_size": (32, 0), "repeats": (5, 200), "warmup": (1, 10), "budget": (1.5, 30.0),
                "fisher_batches": (1, 2), "importance_repeats": (3, 15), "importance_budget": (3.0, 40.0),
                "memory_counts": ([3, 6], [10, 100]), "bootstrap": (100, 1000)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
    args.budget = args.budget or None
    args.importance_budget = args.importance_budget or None
    if not 1 <= args.archs <= 3 or args.repeats < 2 or args.warmup < 0 or args.earlier_steps < 1 or args.pool < 1:
        p.error("--archs must be 1..3, --repeats >= 2, --warmup >= 0, --earlier-steps and --pool >= 1")
    if min(args.memory_counts) < 1 or args.fisher_batches < 1 or args.importance_repeats < 2:
        p.error("--memory-counts and --fisher-batches must be >= 1, --importance-repeats >= 2")
    args.parts = args.only or ["step", "importance", "memory"]
    # Thread CPU time covers a step only if the step runs on this thread alone: one intra-op thread on
    # CPU (autograd runs CPU backward on the calling thread). CUDA kernels run asynchronously: wall time.
    cpu_clock = args.clock == "cpu" or (args.clock == "auto" and args.threads == 1 and args.device == "cpu")
    args.clock_name = "thread CPU time" if cpu_clock else "wall time"
    args.clock = time.thread_time if cpu_clock else time.perf_counter
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    registered = STRATEGIES.names()
    wanted = registered if args.strategies is None else [s.strip() for s in args.strategies.split(",")]
    for name in wanted:
        STRATEGIES.get(name)  # an unknown name fails here, listing the valid ones
    names = [n for n in registered if n in wanted or n == BASELINE]
    env = {**bench_step.machine(device), "strategies": names, "registered": registered,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}}
    print(f"# bench_strategies: torch {env['torch']}, {env['num_threads']} thread(s), {env['cpu']}, device {device}; "
          f"strategies {', '.join(names)}", file=sys.stderr, flush=True)
    cfg = SearchConfig()  # lr, momentum, weight decay and every strategy's options: the search's defaults
    space = SearchSpace.from_dict(SMALL_SPACE) if args.space == "small" else load_space(SPACE)
    archs = architectures(space, 3)[: args.archs]
    data = load_data(args, device)
    results: dict[str, Any] = {"environment": env}
    env["part_seconds"] = {}
    parts: dict[str, Callable[[], Any]] = {
        "step": lambda: bench_steps(names, space, archs, data, cfg, args, device),
        "importance": lambda: bench_importance(space, archs, data, cfg, args, device),
        "memory": lambda: bench_memory(names, data, cfg, args, device)}
    for part, run in parts.items():
        if part in args.parts:
            t0 = time.perf_counter()
            results[part] = run()
            env["part_seconds"][part] = round(time.perf_counter() - t0, 1)
            print(f"# {part}: {env['part_seconds'][part]} s", file=sys.stderr, flush=True)
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["load_average_at_end"] = bench_step.load_average()
    print(f"## Strategy benchmarks ({env['date'][:10]}; torch {env['torch']}; {env['num_threads']} thread(s); "
          f"{env['cpu']}; device {device}; {args.clock_name}; batch {args.batch_size}; {env['seconds']} s; "
          f"load average {env['load_average_at_start']} -> {env['load_average_at_end']})")
    if "step" in results:
        print(f"\n### Step overhead\n\n{markdown_steps(results['step'])}")
        print("\nArchitectures: " + "; ".join(f"{label} = `{arch}`" for label, arch in archs))
    if "importance" in results:
        print(f"\n### Importance estimation\n\n{markdown_importance(results['importance'])}")
    if "memory" in results:
        print(f"\n### Memory\n\n{markdown_memory(results['memory'])}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    failed = results.get("step", {}).get("failures", []) + [r for r in results.get("memory", []) if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
