"""The quadratic-penalty family (wpl, ewc, online-ewc, si, mas, anpyc) on one implementation.

Every member adds ``α/2 · Σ_i Ω_i (θ_i − θ*_i)²`` on the weights of the current path that
earlier candidates consolidated. They differ only in how a candidate's importance is
estimated and how it is folded into Ω and θ*; this module holds the rest, once:

- Ω and θ* are two flat, preallocated buffers over all supernet parameters (views per
  tensor): memory O(parameters) whatever the number of candidates, saved with the run.
- The penalty is applied either as its closed-form gradient αΩ⊙θ − αΩ⊙θ* added before the
  optimiser step (two in-place ``torch._foreach`` ops per step, both factors precomputed per
  candidate), or as a proximal step after it, θ ← (1 − c)⊙θ + c⊙θ* with c = ηαΩ/(1 + ηαΩ),
  which cannot overshoot θ* however large α is.
- Only tensors on the current path with some importance are touched; a candidate's private
  weights move freely.

Papers that write the penalty without the ½ (SI, MAS, ANPyC) keep their own constant in their
options, and the strategy doubles it, so each paper's published value means what it meant there.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.flat import FlatLayout
from wpl_nas.supernet import Supernet

__all__ = ["FORM_HELP", "GLOBAL_HELP", "PER_SAMPLE_HELP", "QuadraticStrategy"]

#: Help texts of the options every quadratic strategy's options share.
FORM_HELP = ("How the pull is applied: 'proximal' (implicit step θ←(θ+ηαΩθ*)/(1+ηαΩ) after the optimiser step; "
         "stable for any strength) or 'gradient' (closed-form gradient αΩ(θ−θ*) added before the step; "
         "diverges once lr·α·max Ω exceeds ~2).")
GLOBAL_HELP = ("Also protect the skeleton's weights (stem, reductions, head) that every candidate shares; "
           "off, only the cell ops are protected.")
PER_SAMPLE_HELP = ("Importance from per-sample gradients (torch.func.vmap; each sample is its own batch for "
               "batch norm) rather than from batch gradients (B·mean of squared batch gradients).")


class QuadraticStrategy(Strategy):
    """Base class of the quadratic-penalty strategies.

    Subclasses implement :meth:`estimate` (a consolidated candidate's importance per tensor)
    and choose how it is folded in (``fold``): ``sum`` Ω += F; ``decay`` Ω ← γΩ + F;
    ``max`` Ω ← max(Ω, F); ``ema`` Ω ← γΩ + (1 − γ)F (F alone where Ω was 0); ``merge``
    Ω += F with θ* the Ω-weighted mean of the anchors, which is exactly the sum of one
    penalty per candidate (EWC). Every mode but ``merge`` re-anchors θ* at the current θ.

    Call order (on top of :class:`Strategy`'s): ``after_candidate`` asks :meth:`estimate`,
    folds it, then calls :meth:`after_fold` (ANPyC prunes there).

    Options used by the base (every subclass's options have them): ``form``
    ('proximal' | 'gradient') and ``include_global``.

    Buffers: ``omega`` (Ω, without α), ``anchor`` (θ*), ``consolidated`` (a count).
    """

    family = "quadratic"

    omega: torch.Tensor
    anchor: torch.Tensor
    consolidated: torch.Tensor

    def __init__(self, supernet: Supernet, options: Any) -> None:
        super().__init__(supernet, options)
        options.validate()
        self.penalty_tag = f"{type(options).section}/penalty"
        self.layout = FlatLayout(supernet)
        self.register_buffer("omega", self.layout.zeros())
        self.register_buffer("anchor", self.layout.zeros())
        self.register_buffer("consolidated", torch.zeros((), dtype=torch.long))
        self._pull: _Pull | None = None

    # --- what subclasses provide -------------------------------------------------------------
    def strength(self, trial_index: int) -> float:
        """α, the strength of α/2·Σ Ω(θ − θ*)² for the candidate at ``trial_index``."""
        raise NotImplementedError

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        """The importance of the freshly trained candidate for each tensor in ``names``."""
        raise NotImplementedError

    def fold(self) -> str:
        """How a candidate's importance is folded into Ω (see the class docstring)."""
        return "sum"

    def decay(self) -> float:
        """γ of the ``decay`` and ``ema`` folds."""
        return 1.0

    def consolidates(self, ctx: CandidateContext) -> bool:
        """Whether this candidate is consolidated (WPL may skip warm-up trials)."""
        return True

    def after_fold(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> None:
        """Called after the candidate's importance is folded in."""

    # --- views into the flat buffers -----------------------------------------------------
    def importance(self, name: str) -> torch.Tensor:
        """Ω of parameter ``name`` (a view; do not modify)."""
        return self.layout.view(self.omega, name)

    def anchor_of(self, name: str) -> torch.Tensor:
        """θ* of parameter ``name`` (a view; do not modify)."""
        return self.layout.view(self.anchor, name)

    def protectable(self, name: str) -> bool:
        """Whether tensor ``name`` may be protected: cell ops always, the skeleton if asked."""
        return bool(self.options.include_global) or Supernet.is_searchable(name)

    # --- hooks -------------------------------------------------------------------------------
    def before_candidate(self, ctx: CandidateContext) -> None:
        alpha = self.strength(ctx.trial_index)
        self._pull = None
        if alpha == 0 or int(self.consolidated) == 0:
            return
        # Shared ∩ path: tensors of this candidate that an earlier candidate consolidated.
        names = [n for n in ctx.params if self.protectable(n) and bool(self.importance(n).any())]
        if names:
            self._pull = _Pull(alpha, [ctx.params[n] for n in names],
                               [self.importance(n) for n in names], [self.anchor_of(n) for n in names])

    @torch.no_grad()
    def after_backward(self, ctx: CandidateContext) -> None:
        pull = self._pull
        if pull is None:
            return
        pull.drop_unused()
        if self.options.form == "gradient" and pull.params:
            # ∇ α/2·Σ Ω(θ−θ*)² = αΩ⊙θ − αΩ⊙θ*; both factors are fixed for the candidate.
            grads: list[torch.Tensor] = [p.grad for p in pull.params]  # type: ignore[misc]
            torch._foreach_addcmul_(grads, pull.params, pull.alpha_omega)
            torch._foreach_sub_(grads, pull.alpha_omega_anchor)

    @torch.no_grad()
    def penalty(self, ctx: CandidateContext) -> float | None:
        """α/2 · Σ Ω(θ − θ*)² over the candidate's shared, protected tensors."""
        pull = self._pull
        return pull.penalty() if pull is not None and pull.params else 0.0

    @torch.no_grad()
    def after_step(self, ctx: CandidateContext) -> None:
        pull = self._pull
        if pull is None or self.options.form != "proximal" or not pull.params:
            return
        # Implicit step on the quadratic: θ ← (θ + ηαΩθ*)/(1 + ηαΩ) = (1 − c)⊙θ + c⊙θ*,
        # c = ηαΩ/(1 + ηαΩ) in [0, 1): it never overshoots θ*, whatever α.
        keep, shift = pull.proximal_terms(ctx.lr)
        torch._foreach_mul_(pull.params, keep)
        torch._foreach_add_(pull.params, shift)

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        self._pull = None
        if not self.consolidates(ctx):
            return
        names = [n for n in ctx.params if self.protectable(n)]
        # A path of parameter-free ops (with the skeleton left out) has nothing to estimate.
        estimates = self.estimate(ctx, names, held_out) if names else []
        with torch.no_grad():
            for name, new in zip(names, estimates, strict=True):
                self._fold(self.importance(name), self.anchor_of(name), new, ctx.params[name])
            self.consolidated += 1
        self.after_fold(ctx, names, held_out)

    def _fold(self, omega: torch.Tensor, anchor: torch.Tensor, new: torch.Tensor, theta: torch.Tensor) -> None:
        fold, gamma = self.fold(), self.decay()
        if fold == "merge":
            total = omega + new
            # θ* = (Ω θ* + F θ)/(Ω + F): the minimiser of Σ_k F_k(θ − θ*_k)², where Ω + F > 0.
            merged = torch.where(total > 0, (omega * anchor + new * theta) / total.clamp_min(1e-30), theta)
            anchor.copy_(merged)
            omega.copy_(total)
            return
        if fold == "sum":
            omega.add_(new)
        elif fold == "decay":
            omega.mul_(gamma).add_(new)
        elif fold == "max":
            torch.maximum(omega, new, out=omega)
        elif fold == "ema":
            omega.copy_(torch.where(omega > 0, gamma * omega + (1 - gamma) * new, new))
        else:
            raise ValueError(f"unknown fold {fold!r}; valid choices: sum, decay, max, ema, merge")
        anchor.copy_(theta)


class _Pull:
    """The shared-and-protected tensors of the current candidate and the per-candidate
    constants derived from them, so that each step costs two in-place ``_foreach`` ops."""

    def __init__(self, alpha: float, params: list[torch.Tensor], omegas: list[torch.Tensor],
                 anchors: list[torch.Tensor]) -> None:
        self.alpha = alpha
        self.params = params
        self.omegas = omegas
        self.anchors = anchors
        self._checked = False
        self._proximal: tuple[float, list[torch.Tensor], list[torch.Tensor]] | None = None

    def drop_unused(self) -> None:
        """After the first backward: forget tensors that got no gradient (dead branches)."""
        if self._checked:
            return
        keep = [i for i, p in enumerate(self.params) if p.grad is not None]
        self.params = [self.params[i] for i in keep]
        self.omegas = [self.omegas[i] for i in keep]
        self.anchors = [self.anchors[i] for i in keep]
        self._checked = True

    def penalty(self) -> float:
        """α/2 · Σ Ω(θ − θ*)², as ‖√Ω ⊙ (θ − θ*)‖² per tensor."""
        u = torch._foreach_sub(self.params, self.anchors)
        torch._foreach_mul_(u, list(torch._foreach_sqrt(self.omegas)))
        return 0.5 * self.alpha * torch.stack(torch._foreach_norm(u)).square().sum().item()

    @functools.cached_property
    def alpha_omega(self) -> list[torch.Tensor]:
        return list(torch._foreach_mul(self.omegas, self.alpha))

    @functools.cached_property
    def alpha_omega_anchor(self) -> list[torch.Tensor]:
        return list(torch._foreach_mul(self.alpha_omega, self.anchors))

    def proximal_terms(self, lr: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(1 − c, c ⊙ θ*)`` with c = ηαΩ/(1 + ηαΩ), recomputed only when the lr changes."""
        if self._proximal is None or self._proximal[0] != lr:
            scaled = torch._foreach_mul(self.omegas, lr * self.alpha)  # ηαΩ
            keep = torch._foreach_add(scaled, 1.0)
            torch._foreach_reciprocal_(keep)  # 1/(1 + ηαΩ) = 1 − c
            shift = torch._foreach_mul(scaled, keep)
            torch._foreach_mul_(shift, self.anchors)  # c ⊙ θ*
            self._proximal = (lr, list(keep), list(shift))
        return self._proximal[1], self._proximal[2]
