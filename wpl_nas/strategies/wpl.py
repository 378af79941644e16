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

    def after_backward(self, ctx: CandidateContext) -> torch.Tensor | None:
        pull = self._pull
        if pull is None:
            return None
        pull.drop_unused()
        if not pull.params:
            return None
        # u = sqrt(Ω) ⊙ (θ − θ*): its squared norm is the penalty, sqrt(Ω) ⊙ u its gradient / α.
        u = torch._foreach_sub(pull.params, pull.anchors)
        torch._foreach_mul_(u, pull.sqrt_omega)
        penalty = 0.5 * pull.alpha * torch.stack(torch._foreach_norm(u)).square().sum()
        if self.options.form == "gradient":
            torch._foreach_mul_(u, pull.sqrt_omega)
            torch._foreach_add_([p.grad for p in pull.params], u, alpha=pull.alpha)  # type: ignore[misc]
        return penalty

    @torch.no_grad()
    def after_step(self, ctx: CandidateContext) -> None:
        pull = self._pull
        if pull is None or self.options.form != "proximal" or not pull.params:
            return
        # Implicit step on the quadratic: θ ← (θ + ηαΩθ*)/(1 + ηαΩ) = θ − c ⊙ (θ − θ*),
        # c = ηαΩ/(1 + ηαΩ) in [0, 1): it never overshoots θ*, whatever α.
        coeff = pull.proximal_coeff(ctx.lr)
        d = torch._foreach_sub(pull.params, pull.anchors)
        torch._foreach_mul_(d, coeff)
        torch._foreach_sub_(pull.params, d)

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
    """The shared-and-protected tensors of the current candidate, cached for its steps."""

    def __init__(self, alpha: float, params: list[torch.Tensor], omegas: list[torch.Tensor],
                 anchors: list[torch.Tensor]) -> None:
        self.alpha = alpha
        self.params = params
        self.omegas = omegas
        self.anchors = anchors
        self.sqrt_omega = list(torch._foreach_sqrt(omegas))
        self._checked = False
        self._coeff: tuple[float, list[torch.Tensor]] | None = None

    def drop_unused(self) -> None:
        """After the first backward: forget tensors that got no gradient (dead branches)."""
        if self._checked:
            return
        keep = [i for i, p in enumerate(self.params) if p.grad is not None]
        self.params = [self.params[i] for i in keep]
        self.omegas = [self.omegas[i] for i in keep]
        self.anchors = [self.anchors[i] for i in keep]
        self.sqrt_omega = [self.sqrt_omega[i] for i in keep]
        self._checked = True

    def proximal_coeff(self, lr: float) -> list[torch.Tensor]:
        if self._coeff is None or self._coeff[0] != lr:
            scaled = torch._foreach_mul(self.omegas, lr * self.alpha)
            denom = torch._foreach_add(scaled, 1.0)
            self._coeff = (lr, list(torch._foreach_div(scaled, denom)))
        return self._coeff[1]
