"""``si``: synaptic intelligence (Zenke, Poole, Ganguli, ICML 2017).

While a candidate trains, each weight's contribution to the drop of its loss is integrated
along the optimisation path, ω_i += −g_i·Δθ_i per step (g the loss gradient before any
penalty, Δθ the step actually taken). When the candidate is consolidated, Ω_i += ω_i /
(Δ_i² + ξ) with Δ_i its total displacement over the candidate. Negative ratios (weights that
moved against their gradient) are clipped to 0, so the penalty stays convex. The paper's
penalty c·Σ Ω(θ − θ*)² has no ½: the base's strength α is 2c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.quadratic import FORM_HELP, GLOBAL_HELP, QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

__all__ = ["SIOptions", "SIStrategy"]


@dataclass
class SIOptions(Options):
    """Synaptic intelligence (Zenke, Poole, Ganguli, ICML 2017): path-integral importance."""

    resumable = ("c",)  # its strength may change on resume
    positive = ("xi",)
    non_negative = ("c",)

    c: float = opt(0.1, "Strength c of c·Σ Ω(θ−θ*)² (the paper's permuted-MNIST value).")
    xi: float = opt(0.1, "Damping ξ in Ω += ω/(Δθ² + ξ).")
    form: str = opt("proximal", FORM_HELP, choices=("proximal", "gradient"))
    include_global: bool = opt(True, GLOBAL_HELP)


@STRATEGIES.register("si")
class SIStrategy(QuadraticStrategy):
    """Path-integral importance, tracked on every step of the current candidate.

    Per step it costs four ``_foreach`` ops over the path's protectable tensors (keep the
    gradient, the step, the product, the new position); the running sums are transient (a
    candidate's integral starts at zero), so nothing beyond Ω and θ* is saved.

    Args:
        supernet: The supernet to protect.
        options: :class:`SIOptions`.
    """

    Options = SIOptions
    options: SIOptions

    def __init__(self, supernet: Supernet, options: SIOptions | None = None) -> None:
        super().__init__(supernet, options)
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._start: list[torch.Tensor] = []
        self._prev: list[torch.Tensor] = []
        self._grad: list[torch.Tensor] = []
        self._omega_run: list[torch.Tensor] = []
        self._checked = False

    def strength(self, trial_index: int) -> float:
        return 2.0 * self.options.c

    @torch.no_grad()
    def before_candidate(self, ctx: CandidateContext) -> None:
        super().before_candidate(ctx)
        self._names = [n for n in ctx.params if self.protectable(n)]
        self._params = [ctx.params[n] for n in self._names]
        self._start = [p.detach().clone() for p in self._params]
        self._prev = [p.detach().clone() for p in self._params]
        self._grad = [torch.zeros_like(p) for p in self._params]
        self._omega_run = [torch.zeros_like(p) for p in self._params]
        self._checked = False

    @torch.no_grad()
    def after_backward(self, ctx: CandidateContext) -> None:
        if not self._checked:  # tensors on dead branches get no gradient: stop tracking them
            keep = [i for i, p in enumerate(self._params) if p.grad is not None]
            for attr in ("_names", "_params", "_start", "_prev", "_grad", "_omega_run"):
                setattr(self, attr, [getattr(self, attr)[i] for i in keep])
            self._checked = True
        if self._params:  # the task gradient, before the penalty's is added
            torch._foreach_copy_(self._grad, [p.grad for p in self._params])  # type: ignore[misc]
            if ctx.scaler is not None:
                # fp16: a non-finite gradient makes the scaler skip this step (Δθ = 0), so the step's
                # true share of the path integral is 0; kept, inf·0 would turn ω, then Ω, into NaN for good.
                for g in self._grad:
                    torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        super().after_backward(ctx)

    @torch.no_grad()
    def after_step(self, ctx: CandidateContext) -> None:
        super().after_step(ctx)
        if not self._params:
            return
        step = torch._foreach_sub(self._params, self._prev)
        torch._foreach_addcmul_(self._omega_run, self._grad, step, value=-1.0)
        torch._foreach_copy_(self._prev, self._params)

    @torch.no_grad()
    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        tracked = dict(zip(self._names, zip(self._omega_run, self._start, strict=True), strict=True))
        out = []
        for name in names:
            param = ctx.params[name]
            if name not in tracked:
                out.append(torch.zeros_like(param))
                continue
            omega_run, start = tracked[name]
            moved = (param - start).square_().add_(self.options.xi)
            out.append((omega_run / moved).clamp_min_(0.0))
        self._names, self._params, self._start, self._prev, self._grad, self._omega_run = [], [], [], [], [], []
        return out
