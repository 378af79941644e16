"""``anpyc``: adversarial neural pruning and synaptic consolidation (Peng et al., TNNLS 2021).

Consolidation: a label-free importance Ω = max(0, g·θ + ½θ²g²), g the gradient of the
output entropy (the second-order estimate of the output change if θ were zeroed, so both a
weight's size and its downstream effect count), folded by element-wise maximum so that
frequently trained ops do not grow rigid, and the quadratic pull λ·Σ Ω(θ − θ*)² (no ½ in the
paper: the base's strength α is 2λ).

Pruning, the schedule: after the n-th consolidated candidate (n = 0, 1, ...), a fraction
``prune · prune_decay^n`` of the candidate's *free* cell-op weights (those no earlier
candidate protects, Ω = 0 before it) with the smallest importance is set to zero, as are
free weights of zero importance; they keep Ω = 0, so they are capacity for later candidates.
Pruning stops once the fraction falls below ``prune_min``; skeleton weights (stem,
reductions, head) and batch-norm parameters are never pruned. The paper fine-tunes after
each pruning step; here the prune is one-shot, because the only data a consolidation may use
is the held-out split, and training on it would leak into the scores.
"""

from __future__ import annotations

import torch

from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import entropy_taylor_importance
from wpl_nas.strategies.quadratic import QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.strategy_options import ANPyCOptions
from wpl_nas.supernet import Supernet

__all__ = ["ANPyCStrategy"]


@STRATEGIES.register("anpyc")
class ANPyCStrategy(QuadraticStrategy):
    """Label-free importance with max accumulation, plus pruning of free, unimportant weights.

    Args:
        supernet: The supernet to protect.
        options: :class:`~wpl_nas.strategy_options.ANPyCOptions`.
    """

    Options = ANPyCOptions
    options: ANPyCOptions

    def __init__(self, supernet: Supernet, options: ANPyCOptions | None = None) -> None:
        super().__init__(supernet, options or ANPyCOptions())
        self._free: dict[str, torch.Tensor] = {}
        self._new: dict[str, torch.Tensor] = {}
        self.pruned_total = 0  # weights zeroed so far (for logging)

    def strength(self, trial_index: int) -> float:
        return 2.0 * self.options.lam

    def fold(self) -> str:
        return "max"

    def prune_fraction(self, index: int) -> float:
        """The fraction pruned after the ``index``-th consolidated candidate (0 once below prune_min)."""
        o = self.options
        fraction = o.prune * o.prune_decay ** index
        return fraction if fraction >= o.prune_min else 0.0

    @torch.no_grad()
    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        new = entropy_taylor_importance(ctx.supernet, names, held_out, batch_size=o.batch_size, batches=o.batches)
        # Remember, before the fold, which weights no earlier candidate protects.
        self._free = {n: self.importance(n) == 0 for n in names if ".edges." in n and ctx.params[n].dim() > 1}
        self._new = {n: f for n, f in zip(names, new, strict=True) if n in self._free}
        return new

    @torch.no_grad()
    def after_fold(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> None:
        fraction = self.prune_fraction(int(self.consolidated) - 1)
        free, new = self._free, self._new
        self._free, self._new = {}, {}
        if fraction == 0:
            return
        for name, is_free in free.items():
            scores = new[name][is_free]
            k = int(fraction * scores.numel())
            if scores.numel() == 0:
                continue
            threshold = scores.kthvalue(k).values if k > 0 else scores.new_tensor(-1.0)
            cut = is_free & ((new[name] <= threshold) | (new[name] == 0))
            param = ctx.params[name]
            param.masked_fill_(cut, 0.0)
            self.importance(name).masked_fill_(cut, 0.0)
            self.anchor_of(name).masked_fill_(cut, 0.0)
            momentum = ctx.optimizer.state.get(param, {}).get("momentum_buffer")
            if momentum is not None:  # a stale velocity would move the freed weights on the next step
                momentum.masked_fill_(cut, 0.0)
            self.pruned_total += int(cut.sum())
