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

from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import empirical_fisher
from wpl_nas.strategies.quadratic import QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.strategy_options import WPLOptions
from wpl_nas.supernet import Supernet

__all__ = ["WPLStrategy"]


@STRATEGIES.register("wpl")
class WPLStrategy(QuadraticStrategy):
    """Weight plasticity loss on the shared weights of the current candidate's path.

    Ω accumulates by ``--wpl-accumulate`` (sum, decay or max); α may decay linearly over the
    search; candidates before ``start_trial`` are not consolidated (a warm-up).

    Args:
        supernet: The supernet to protect.
        options: :class:`~wpl_nas.strategy_options.WPLOptions`.
    """

    Options = WPLOptions
    options: WPLOptions

    def __init__(self, supernet: Supernet, options: WPLOptions | None = None) -> None:
        super().__init__(supernet, options or WPLOptions())

    def fold(self) -> str:
        return self.options.accumulate

    def decay(self) -> float:
        return self.options.decay

    def strength(self, trial_index: int) -> float:
        """α for the candidate at ``trial_index``: constant, then linear decay to 0 if asked."""
        o = self.options
        if o.alpha_decay > 0 and trial_index >= o.alpha_decay_after:
            return max(o.alpha - (trial_index - o.alpha_decay_after + 1) * o.alpha_decay, 0.0)
        return o.alpha

    def consolidates(self, ctx: CandidateContext) -> bool:
        return ctx.trial_index >= self.options.start_trial

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        fisher = empirical_fisher(ctx.supernet, names, held_out, batch_size=o.fisher_batch_size,
                                  batches=o.fisher_batches, per_sample=o.per_sample)
        if o.normalize:
            with torch.no_grad():
                for f in fisher:
                    norm = f.norm()
                    if norm > 0:
                        f.mul_(o.normalize_norm / norm)
        return fisher
