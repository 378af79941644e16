"""``hat``: hard attention to the task (Serrà, Surís, Miron, Karatzoglou, ICML 2018), on a supernet.

Each candidate learns a gate per output channel of every parameterised op in the cells,
a = σ(s·e), with one embedding e per candidate. The gate multiplies the op's output, so a
candidate trains (and later relies on) only the channels it attends to. Once a candidate is
*protected*, the channels it attends to are masked from later updates: the gradients of their
weights are multiplied by 1 − a^{<k}, where the cumulative mask a^{<k} is the element-wise max
of the protected candidates' masks at s_max. A sparsity regulariser c·R keeps each candidate's
mask small among the still-free channels, so later candidates find room.

Adaptations to weight-sharing NAS, on purpose:

- Protection is bounded: only the best ``protect`` candidates (by score at training, a
  :class:`~wpl_nas.strategies.protected.ProtectedSet`) keep an embedding and contribute to the
  cumulative mask. A better candidate releases the worst one, which restores the plasticity of
  the channels only it protected; the supernet never fills up, and memory is at most
  ``protect + 1`` embeddings whatever the number of candidates.
- Gradient conditioning uses the output side only, 1 − a^{<k}_out, not HAT's
  1 − min(a_out, a_in): a cell node sums several edges, so the channel mask of an op's input is
  not one op's mask. The output-side rule is the safe one (it freezes at least what HAT does).
- SGD momentum and weight decay would still move masked weights, so they are also pinned:
  θ ← θ_old + (1 − a^{<k}) ⊙ (θ − θ_old) around each optimiser step.
- ``include_global`` (on by default) also gates and protects the stem and the reductions'
  blocks, as HAT gates every layer but the task heads; the heads stay shared and unprotected.
  Off, forgetting leaks through the shared skeleton: a later candidate confined to the free
  channels of the shared ops retrains the skeleton all the more (on the tests' tiny space, A
  then loses about as much accuracy to B as under ``naive``, or more).
"""

from __future__ import annotations

import copy
import json
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wpl_nas.configs import Options, opt
from wpl_nas.errors import ConfigError
from wpl_nas.spaces import Architecture
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.protected import ProtectedSet
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet
from wpl_nas.supernet.network import Cell, ResidualReduction

__all__ = ["HATOptions", "HATStrategy"]

#: Attribute of the supernet holding its gate router: the hooks are registered once per supernet.
_ROUTER = "_hat_gate_router"


@dataclass(frozen=True)
class _GatedOp:
    """One gated op module: its place in the supernet and its slice of the flat gate vector."""

    name: str  # module name, e.g. "stages.0.0.edges.0->1.conv_5"
    edge: str  # edge label, e.g. "0->1"; "" for the skeleton (on every path)
    op: str  # op name, e.g. "conv_5"; "" for the skeleton
    start: int
    stop: int
    params: tuple[str, ...]  # full names of its parameters (all with the output channel first)


def _gated_ops(supernet: Supernet, *, include_global: bool) -> list[_GatedOp]:
    """Every op with parameters on a cell edge, in module order, with consecutive slices; with
    ``include_global``, then the stem and the blocks of each reduction (never the heads)."""
    found: list[tuple[str, str, str, nn.Module]] = []  # (module name, edge, op, module)
    skeleton: list[tuple[str, str, str, nn.Module]] = []
    for name, module in supernet.named_modules():
        if isinstance(module, Cell):
            for edge, choices in module.edges.items():
                for op, op_module in choices.items():  # type: ignore[operator]
                    found.append((f"{name}.edges.{edge}.{op}", edge, op, op_module))
        elif isinstance(module, ResidualReduction):
            skeleton += [(f"{name}.{child}", "", "", m) for child, m in module.named_children()]
    if include_global:
        found += [("stem", "", "", supernet.stem), *skeleton]
    ops: list[_GatedOp] = []
    offset = 0
    for name, edge, op, module in found:
        params = list(module.named_parameters())
        if not params:
            continue  # skip_connect, pools, identity shortcuts: nothing to gate or protect
        # The module's output channels: its last parameter (a batch norm's, or a lone conv's) gives them.
        c = params[-1][1].shape[0]
        if any(p.shape[0] != c for _, p in params):
            raise TypeError(f"hat gates a module per output channel, but the parameters of {name} do not all "
                            f"lead with its {c} output channels: {[tuple(p.shape) for _, p in params]}")
        ops.append(_GatedOp(name, edge, op, offset, offset + c, tuple(f"{name}.{n}" for n, _ in params)))
        offset += c
    return ops


class _GateRouter:
    """The forward hooks of one supernet, shared by every HAT strategy built on it.

    Registering hooks once per supernet (rather than once per strategy) means a second strategy
    on the same supernet (a resumed or reloaded one) takes the gates over instead of gating
    every output twice: the most recently built strategy owns them. The supernet's pre-hook asks
    the owner for the flat gate vector of the chosen architecture once per forward; each op's
    hook multiplies its output by its slice.
    """

    def __init__(self, supernet: Supernet, ops: list[_GatedOp]) -> None:
        self.layout = [(o.name, o.start, o.stop) for o in ops]
        self.owner: weakref.ReferenceType[HATStrategy] | None = None
        self.gate: torch.Tensor | None = None
        modules = dict(supernet.named_modules())
        self.handles = [supernet.register_forward_pre_hook(self._before), supernet.register_forward_hook(self._after)]
        self.handles += [modules[o.name].register_forward_hook(_OpGate(self, o.start, o.stop)) for o in ops]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __deepcopy__(self, memo: dict[int, Any]) -> _GateRouter:
        # A deep copy of the supernet stays gated by the same strategy (the owner is shared).
        new = object.__new__(_GateRouter)
        new.__dict__.update(self.__dict__)  # not copy.copy: that would go through __getstate__
        memo[id(self)] = new
        new.gate = None
        new.handles = copy.deepcopy(self.handles, memo)
        return new

    def __getstate__(self) -> dict[str, Any]:
        # A pickled supernet (torch.save of the module) comes back ungated until a strategy attaches.
        return {**self.__dict__, "owner": None, "gate": None}

    def _before(self, net: nn.Module, args: Any) -> None:
        owner = self.owner() if self.owner is not None else None
        self.gate = owner.gate_vector(net) if owner is not None else None  # type: ignore[arg-type]

    def _after(self, net: nn.Module, args: Any, output: Any) -> None:
        self.gate = None  # do not keep the graph (or an inference tensor) past the forward


class _OpGate:
    """Forward hook of one op: multiplies its output channels by their gates."""

    def __init__(self, router: _GateRouter, start: int, stop: int) -> None:
        self.router, self.start, self.stop = router, start, stop

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        gate = self.router.gate
        if gate is None:
            return None  # no embedding for this architecture: ungated
        g = gate[self.start: self.stop]
        return output * g.view(1, -1, *([1] * (output.dim() - 2)))  # broadcast over batch and positions


@dataclass
class HATOptions(Options):
    """Hard attention to the task (Serrà et al., ICML 2018), one attention mask per candidate."""

    resumable = ("c",)  # its strength may change on resume
    positive = ("s_max", "thres_emb", "thres_cosh", "protect")
    non_negative = ("c",)

    c: float = opt(0.75, "Strength c of the sparsity regulariser on the attention masks (paper: 0.75).")
    s_max: float = opt(400.0, "Final gate steepness s_max; s is annealed from 1/s_max within each epoch.")
    thres_emb: float = opt(6.0, "Embeddings are clamped to ±thres_emb after each step.")
    thres_cosh: float = opt(50.0, "s·e is clamped to ±thres_cosh in the gradient compensation.")
    protect: int = opt(
        5, "Size of the protected set: the best candidates (by score at training) whose units are "
        "masked from later updates; a better candidate releases the worst, so the supernet never fills up.")
    include_global: bool = opt(
        True, "Also gate and protect the stem and reductions, as the paper gates every layer (heads are never "
        "gated). Off, the shared skeleton carries the forgetting: measured, HAT then drops more than naive.")


@STRATEGIES.register("hat")
class HATStrategy(Strategy):
    """Hard attention to the task: per-candidate channel gates, protected channels frozen.

    Call order, per candidate (see :class:`~wpl_nas.strategies.base.Strategy`):

    - ``before_candidate``: give the candidate an embedding (N(0, 1), seeded by the run's seed and
      its trial index, or its own if it is already protected and trains again); precompute the gradient
      multipliers 1 − a^{<k} of its path's gated weights, a^{<k} being the cumulative mask of the
      *other* protected candidates, and the weights of the regulariser.
    - forward (hooks): outputs of gated ops are multiplied by σ(s·e). While the candidate trains,
      s is annealed within each epoch, s = 1/s_max + (s_max − 1/s_max)·b/(B − 1) for batch b of
      B, and e gets a gradient; everywhere else (evaluation, other candidates) s = s_max.
    - ``after_backward``: mask the gated weights' gradients by 1 − a^{<k} on the output channel;
      add the gradient of c·R, R = Σ a(1 − a^{<k}) / Σ (1 − a^{<k}) over the path's channels
      (the mean of a for the first candidate); compensate the embedding's gradient,
      q ← s_max·(cosh(clamp(s·e, ±thres_cosh)) + 1) / (s·(cosh(e) + 1))·q; snapshot the masked
      weights.
    - optimiser step (the embedding is not in the optimiser).
    - ``after_step``: pin the masked weights, θ ← θ_old + (1 − a^{<k}) ⊙ (θ − θ_old), so momentum
      and weight decay cannot move them either; SGD step on the embedding with the optimiser's
      lr, then clamp it to ±thres_emb.
    - ``after_candidate``: offer the candidate to the protected set with its score; keep its
      embedding if admitted, drop the embeddings of whoever is released (or of the candidate if
      not admitted) and recompute the cumulative mask from the remaining members.

    A candidate without an embedding (never trained, released, or not admitted) runs *ungated*:
    its later scores use every channel of its ops, not the subset it was trained with. Stand-alone
    networks (:meth:`Supernet.standalone`) are ungated too. The skeleton (stem, reductions) is
    gated and protected with ``include_global`` (the default); the heads never are.

    Buffers (saved with the run): ``embeddings`` (``protect + 1`` rows over all gated channels),
    ``cum_mask`` (the protected candidates' cumulative mask at s_max), ``seed`` (of the
    embeddings, ``torch.initial_seed()`` when the strategy was built); the extra state holds
    which candidate owns which row and the protected set with its scores.

    Args:
        supernet: The supernet to protect; its cell ops get forward hooks (once per supernet,
            owned by the most recently built HAT strategy, held weakly: once the strategy is
            gone, the supernet runs ungated).
        options: :class:`HATOptions`.
    """

    Options = HATOptions
    penalty_tag = "hat/regularizer"
    family = "isolation"
    changes_forward = True
    options: HATOptions
    embeddings: torch.Tensor
    cum_mask: torch.Tensor
    seed: torch.Tensor

    def __init__(self, supernet: Supernet, options: HATOptions | None = None) -> None:
        super().__init__(supernet, options)
        if int(self.options.protect) != self.options.protect:
            raise ConfigError(f"hat.protect must be a whole number, but got protect={self.options.protect!r}")
        if supernet.space.kind != "cell":
            raise ConfigError(f"strategy 'hat' gates the operations of cell spaces, but space "
                              f"{supernet.space.name!r} is a {supernet.space.kind!r} space; pick another "
                              "--strategy (wpl, ewc, mas, si, ...)")
        self._supernet_units = supernet.path_units
        # Not yet a field of HATOptions (default off); see the module docstring.
        self.include_global = self.options.include_global
        self._ops = _gated_ops(supernet, include_global=self.include_global)
        units = self._ops[-1].stop if self._ops else 0
        first = next(supernet.parameters())
        self.register_buffer("embeddings", torch.zeros(int(self.options.protect) + 1, units,
                                                       device=first.device, dtype=first.dtype))
        self.register_buffer("cum_mask", torch.zeros(units, device=first.device, dtype=first.dtype))
        # Embeddings are drawn from (this seed, trial index): the run's seed (build_supernet seeds
        # torch just before), saved with the state so that a resumed run draws the same ones.
        self.register_buffer("seed", torch.tensor(torch.initial_seed() % 2**62, dtype=torch.long))
        self.protected = ProtectedSet(int(self.options.protect))
        self._slots: dict[Architecture, int] = {}  # candidate -> its row of `embeddings`
        # The candidate being trained (between before_candidate and after_candidate).
        self._current: Architecture | None = None
        self._live: torch.Tensor | None = None  # its embedding row as a leaf that collects gradients
        self._training = False  # True until its last training step: the forward anneals s
        self._batch = 0  # index b of the next training batch within the epoch
        self._plan: _Plan | None = None
        self._attach(supernet)

    # --- gates ------------------------------------------------------------------------------
    def _attach(self, supernet: Supernet) -> None:
        router = getattr(supernet, _ROUTER, None)
        if router is not None and router.layout != [(o.name, o.start, o.stop) for o in self._ops]:
            router.remove()  # an earlier HAT strategy gated other modules (include_global differs)
            router = None
        if router is None:
            router = _GateRouter(supernet, self._ops)
            setattr(supernet, _ROUTER, router)
        router.owner = weakref.ref(self)

    def attach(self, supernet: Supernet) -> None:
        """Make this strategy the one whose embeddings gate ``supernet`` (the latest built one
        does by default)."""
        self._attach(supernet)

    @property
    def current_embedding(self) -> torch.Tensor | None:
        """The embedding of the candidate in training, a leaf whose ``grad`` the backward fills
        (None between candidates); it shares storage with its row of ``embeddings``."""
        return self._live

    def trainable_tensors(self) -> list[torch.Tensor]:
        return [] if self._live is None else [self._live]

    def anneal(self, batch: int, batches: int) -> float:
        """s for training batch ``batch`` of ``batches`` in an epoch: 1/s_max up to s_max."""
        s_max = self.options.s_max
        if batches <= 1:
            return s_max
        return 1.0 / s_max + (s_max - 1.0 / s_max) * batch / (batches - 1)

    def gate_vector(self, supernet: Supernet) -> torch.Tensor | None:
        """The flat gates σ(s·e) of the supernet's chosen architecture (None: run ungated)."""
        arch = supernet.arch
        if arch is None:
            return None
        live, plan = self._live, self._plan
        if self._training and supernet.training and arch == self._current and live is not None and plan is not None:
            return torch.sigmoid(live * self.anneal(self._batch, plan.batches))  # graph back to e
        slot = self._slots.get(arch)
        if slot is None:
            return None
        return torch.sigmoid(self.embeddings[slot] * self.options.s_max)

    def mask_of(self, arch: Architecture) -> torch.Tensor | None:
        """``arch``'s mask at s_max over all gated channels (0 off its path); None without an embedding."""
        slot = self._slots.get(arch)
        if slot is None:
            return None
        with torch.no_grad():
            return torch.sigmoid(self.embeddings[slot] * self.options.s_max) * self._path_units(arch)

    def _path_units(self, arch: Architecture) -> torch.Tensor:
        live = self._supernet_units(arch)
        units = torch.zeros_like(self.cum_mask)
        for o in self._ops:
            if not o.edge or (o.edge, o.op) in live:
                units[o.start: o.stop] = 1.0
        return units

    def _cumulative(self, exclude: Architecture | None = None) -> torch.Tensor:
        """Element-wise max of the protected candidates' masks (but ``exclude``'s)."""
        cum = torch.zeros_like(self.cum_mask)
        for arch in self.protected.members:
            mask = self.mask_of(arch) if arch != exclude else None
            if mask is not None:
                torch.maximum(cum, mask, out=cum)
        return cum

    # --- protection -------------------------------------------------------------------------
    def _drop(self, arch: Architecture) -> None:
        slot = self._slots.pop(arch, None)
        if slot is not None:
            self.embeddings[slot].zero_()

    def _refresh(self) -> None:
        """Recompute the cumulative mask (and the current candidate's multipliers) from the members."""
        with torch.no_grad():
            self.cum_mask.copy_(self._cumulative())
        if self._plan is not None and self._current is not None:
            self._plan = self._make_plan(self._current, self._plan.params, self._plan.batches)

    @torch.no_grad()
    def release(self, arch: Architecture) -> bool:
        """Stop protecting ``arch``: drop its embedding (it then runs ungated) and free the
        channels only it protected. Returns False if it was not protected."""
        if not self.protected.release(arch):
            return False
        if arch != self._current:  # a candidate in training keeps its embedding until consolidated
            self._drop(arch)
        self._refresh()
        return True

    # --- the per-candidate plan -------------------------------------------------------------
    def _make_plan(self, arch: Architecture, params: dict[str, nn.Parameter], batches: int) -> _Plan:
        with torch.no_grad():
            others = self._cumulative(exclude=arch) if arch in self.protected else self.cum_mask.clone()
            free = (1.0 - others) * self._path_units(arch)
            total = float(free.sum())
            reg = free * (self.options.c / total) if total > 0 else torch.zeros_like(free)
            masked: list[torch.Tensor] = []
            keep: list[torch.Tensor] = []
            for o in self._ops:
                m = others[o.start: o.stop]
                if o.params[0] not in params or not bool(m.any()):
                    continue  # off the path, or no protected channel in this op
                for name in o.params:
                    p = params[name]
                    masked.append(p)
                    keep.append((1.0 - m).view(-1, *([1] * (p.dim() - 1))).to(p.dtype))
            return _Plan(params, batches, bool(self.protected.members and others.any()), reg, masked, keep,
                         [torch.empty_like(p) for p in masked])

    @torch.no_grad()
    def before_candidate(self, ctx: CandidateContext) -> None:
        arch = ctx.arch
        # Only protected candidates keep an embedding between candidates: drop stale ones.
        for stale in [a for a in self._slots if a not in self.protected]:
            self._drop(stale)
        slot = self._slots.get(arch)
        if slot is None:
            used = set(self._slots.values())
            slot = next(i for i in range(self.embeddings.shape[0]) if i not in used)  # protect + 1 rows
            gen = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + ctx.trial_index) % 2**63)
            init = torch.randn(self.embeddings.shape[1], generator=gen, dtype=torch.float32)
            self.embeddings[slot].copy_(init)
            self._slots[arch] = slot
        self._current = arch
        # A detached row shares the buffer's storage: updating the leaf updates the buffer.
        self._live = self.embeddings[slot].detach().requires_grad_(True)
        self._training = True
        self._batch = 0
        # s anneals over the steps the epoch really runs: fewer in the last epoch of a step budget.
        self._plan = self._make_plan(arch, ctx.params, max(ctx.steps_in_epoch(0), 1))

    @torch.no_grad()
    def after_backward(self, ctx: CandidateContext) -> None:
        plan, live = self._plan, self._live
        if plan is None or live is None or ctx.arch != self._current:
            return
        if plan.masked:
            plan.drop_unused()
            grads: list[torch.Tensor] = [p.grad for p in plan.with_grad]  # type: ignore[misc]
            if grads:  # masked tensors may all sit on dead edges (no gradient at all)
                torch._foreach_mul_(grads, plan.keep_with_grad)
            torch._foreach_copy_(plan.snapshots, plan.masked)
        o = self.options
        s = self.anneal(ctx.step, plan.batches)
        if live.grad is None:
            live.grad = torch.zeros_like(live)
        grad = live.grad
        # Sparsity regulariser c·R: ∂R/∂e = s·a(1 − a)·(1 − a^{<k})/Σ(1 − a^{<k}) on the path.
        a = torch.sigmoid(live * s)
        grad.addcmul_(a * (1.0 - a), plan.reg, value=s)
        # Compensation: the gradient as if the gate were already at s_max (HAT's eq. for q').
        num = torch.cosh(torch.clamp(live * s, -o.thres_cosh, o.thres_cosh)) + 1.0
        den = torch.cosh(live) + 1.0
        grad.mul_(num.div_(den).mul_(o.s_max / s))

    @torch.no_grad()
    def after_step(self, ctx: CandidateContext) -> None:
        plan, live = self._plan, self._live
        if plan is None or live is None or ctx.arch != self._current:
            return
        if plan.masked:
            # θ ← θ_old + (1 − a^{<k})⊙(θ − θ_old): exactly θ_old where a^{<k} = 1.
            torch._foreach_sub_(plan.masked, plan.snapshots)
            torch._foreach_mul_(plan.masked, plan.keep)
            torch._foreach_add_(plan.masked, plan.snapshots)
        if live.grad is not None:
            live.sub_(live.grad, alpha=ctx.lr).clamp_(-self.options.thres_emb, self.options.thres_emb)
            live.grad = None
        self._batch = ctx.step + 1
        if self._batch >= plan.batches:
            self._batch = 0
            if ctx.epoch >= ctx.epochs - 1 or ctx.steps_in_epoch(ctx.epoch + 1) == 0:
                self._training = False  # trained: any later forward gates at s_max
            else:
                plan.batches = ctx.steps_in_epoch(ctx.epoch + 1)

    @torch.no_grad()
    def penalty(self, ctx: CandidateContext) -> float | None:
        """c·R of the current candidate at s_max; 0.0 while no other candidate is protected
        (the regulariser then only compacts the first masks and protects nothing)."""
        plan, live = self._plan, self._live
        if plan is None or live is None or not plan.protecting:
            return 0.0
        return float((torch.sigmoid(live * self.options.s_max) * plan.reg).sum())

    @torch.no_grad()
    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        arch = ctx.arch
        if self._live is not None:
            self._live.grad = None
        self._current, self._live, self._plan, self._training = None, None, None, False
        if arch not in self._slots:
            return  # never trained under this strategy: no mask to protect
        admitted, released = self.protected.offer(arch, ctx.score)
        for gone in released:
            self._drop(gone)
        if not admitted:
            self._drop(arch)
        self._refresh()

    # --- state ------------------------------------------------------------------------------
    def get_extra_state(self) -> torch.Tensor:
        # As bytes in a tensor, so that every entry of the state dict is a tensor.
        state = {"slots": {str(a): i for a, i in self._slots.items()}, "protected": self.protected.state_dict()}
        return torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        data = json.loads(bytes(state.tolist()).decode())
        self._slots = {Architecture.parse(a): int(i) for a, i in data["slots"].items()}
        self.protected = ProtectedSet(int(self.options.protect))
        self.protected.load_state_dict(data["protected"])
        self._current, self._live, self._plan, self._training = None, None, None, False


class _Plan:
    """The current candidate's constants: its regulariser weights and its masked weights with
    their multipliers 1 − a^{<k}, so that each step costs a few in-place ``_foreach`` ops."""

    def __init__(self, params: dict[str, nn.Parameter], batches: int, protecting: bool, reg: torch.Tensor,
                 masked: list[torch.Tensor], keep: list[torch.Tensor], snapshots: list[torch.Tensor]) -> None:
        self.params = params
        self.batches = batches
        self.protecting = protecting
        self.reg = reg  # c·(1 − a^{<k})/Σ(1 − a^{<k}) on the path's channels, 0 elsewhere
        self.masked = masked
        self.keep = keep
        self.snapshots = snapshots
        self.with_grad: list[torch.Tensor] = masked
        self.keep_with_grad: list[torch.Tensor] = keep
        self._checked = False

    def drop_unused(self) -> None:
        """After the first backward: mask gradients only of tensors that get one."""
        if self._checked:
            return
        idx = [i for i, p in enumerate(self.masked) if p.grad is not None]
        self.with_grad = [self.masked[i] for i in idx]
        self.keep_with_grad = [self.keep[i] for i in idx]
        self._checked = True
