"""``wpl``: the weight plasticity loss (Benyahia et al., "Overcoming Multi-Model Forgetting", ICML 2019).

After candidate k is trained, its diagonal empirical Fisher F_k on held-out training data is
folded into an importance Ω over the tensors on its path, and those tensors are anchored:
θ* ← θ. A later candidate pays α/2 · Σ_i Ω_i (θ_i − θ*_i)² on the weights it shares with
earlier ones (Ω is zero elsewhere, so its private weights move freely).

Differences from the reference code, on purpose: α is applied when the penalty is, never
folded into Ω (so Ω does not compound); Ω and θ* live in registered, preallocated buffers
(saved with the run, moved by ``.to``); the Fisher comes from the held-out split of the
*training* data; the per-tensor normalisation that the reference's norm clip amounts to is an
explicit option.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.config import WPLOptions
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

__all__ = ["WPLStrategy"]


@STRATEGIES.register("wpl")
class WPLStrategy(Strategy):
    """Weight plasticity loss on the shared weights of the current candidate's path.

    Buffers (one flat vector over all supernet parameters, memory O(parameters) whatever
    the number of candidates):

    - ``omega``: accumulated importance Ω (diagonal Fisher), without α;
    - ``anchor``: θ*, each tensor's value when a candidate using it was last consolidated;
    - ``consolidated``: how many candidates have been consolidated.

    Args:
        supernet: The supernet to protect.
        options: :class:`~wpl_nas.config.WPLOptions`.
    """

    Options = WPLOptions
    penalty_tag = "wpl/penalty"
    options: WPLOptions
    omega: torch.Tensor
    anchor: torch.Tensor
    consolidated: torch.Tensor

    def __init__(self, supernet: Supernet, options: WPLOptions | None = None) -> None:
        super().__init__(supernet, options or WPLOptions())
        self.options.validate()
        self._slices: dict[str, tuple[int, torch.Size]] = {}
        offset = 0
        for name, p in supernet.named_parameters():
            self._slices[name] = (offset, p.shape)
            offset += p.numel()
        first = next(supernet.parameters())
        self.register_buffer("omega", torch.zeros(offset, device=first.device, dtype=first.dtype))
        self.register_buffer("anchor", torch.zeros(offset, device=first.device, dtype=first.dtype))
        self.register_buffer("consolidated", torch.zeros((), dtype=torch.long))
        self._pull: _Pull | None = None

    # --- views into the flat buffers -----------------------------------------------------
    def _view(self, buffer: torch.Tensor, name: str) -> torch.Tensor:
        offset, shape = self._slices[name]
        return buffer[offset: offset + shape.numel()].view(shape)

    def importance(self, name: str) -> torch.Tensor:
        """Ω of parameter ``name`` (a view; do not modify)."""
        return self._view(self.omega, name)

    def anchor_of(self, name: str) -> torch.Tensor:
        """θ* of parameter ``name`` (a view; do not modify)."""
        return self._view(self.anchor, name)

    def _protectable(self, name: str) -> bool:
        return self.options.include_global or ".edges." in name

    def alpha_at(self, trial_index: int) -> float:
        """α for the candidate at ``trial_index``: constant, then linear decay to 0 if asked."""
        o = self.options
        if o.alpha_decay > 0 and trial_index >= o.alpha_decay_after:
            return max(o.alpha - (trial_index - o.alpha_decay_after + 1) * o.alpha_decay, 0.0)
        return o.alpha

    # --- hooks -------------------------------------------------------------------------------
    def before_candidate(self, ctx: CandidateContext) -> None:
        alpha = self.alpha_at(ctx.trial_index)
        self._pull = None
        if alpha == 0 or int(self.consolidated) == 0:
            return
        # Shared ∩ path: tensors of this candidate that an earlier candidate consolidated.
        names = [n for n in ctx.params if self._protectable(n) and bool(self.importance(n).any())]
        if names:
            params: list[torch.Tensor] = [ctx.params[n] for n in names]
            self._pull = _Pull(alpha, params,
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
        if ctx.trial_index < self.options.start_trial:
            return
        names = [n for n in ctx.params if self._protectable(n)]
        fisher = self.empirical_fisher(ctx.supernet, [ctx.params[n] for n in names], held_out)
        o = self.options
        with torch.no_grad():
            for name, f in zip(names, fisher, strict=True):
                if o.normalize:
                    norm = f.norm()
                    if norm > 0:
                        f.mul_(o.normalize_norm / norm)
                omega = self.importance(name)
                if o.accumulate == "sum":
                    omega.add_(f)
                elif o.accumulate == "decay":
                    omega.mul_(o.decay).add_(f)
                else:
                    torch.maximum(omega, f, out=omega)
                self.anchor_of(name).copy_(ctx.params[name])
            self.consolidated += 1

    def empirical_fisher(
        self, supernet: Supernet, params: list[nn.Parameter], held_out: Batches
    ) -> list[torch.Tensor]:
        """Diagonal empirical Fisher of the chosen path on held-out batches.

        Batch-gradient approximation: F ≈ B · mean_b (∇ mean-CE_b)², which matches
        E[g_i²] (per-sample gradients) at a stationary point, where the mean gradient is ~0;
        with batch-statistics batch norm, per-sample gradients are not defined anyway.
        """
        o = self.options
        fisher = [torch.zeros_like(p) for p in params]
        count = 0
        was_training = supernet.training
        supernet.train()
        with torch.enable_grad():
            for x, y in held_out(o.fisher_batch_size, o.fisher_batches):
                loss = F.cross_entropy(supernet(x), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for f, g in zip(fisher, grads, strict=True):
                    if g is not None:
                        f.addcmul_(g, g, value=float(len(y)))
                count += 1
        supernet.train(was_training)
        if count:
            torch._foreach_div_(fisher, float(count))
        return fisher


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
