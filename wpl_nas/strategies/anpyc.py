"""``anpyc``: adversarial neural pruning and synaptic consolidation (Peng et al., TNNLS 2021).

Consolidation: a label-free importance Ω = max(0, g·θ + ½θ²g²), g the gradient of the
output entropy (the second-order estimate of the output change if θ were zeroed, so both a
weight's size and its downstream effect count), folded by element-wise maximum so that
frequently trained ops do not grow rigid, and the quadratic pull λ·Σ Ω(θ − θ*)² (no ½ in the
paper: the base's strength α is 2λ).

Pruning frees capacity for later candidates. The paper trains a task, prunes its unimportant
weights, then retrains with the pruned weights held at zero. Here that cycle fits inside the
candidate's own training budget: at the fraction ``prune_at`` of its steps, the share
``prune · prune_decay^n`` (n = candidates consolidated so far) of its *free* cell-op weights
(no earlier candidate protects them: Ω = 0) with the smallest importance on the current batch
is set to zero, and the remaining steps train the candidate with them held at zero. They end
with Ω = 0, so later candidates use them freely. Pruning stops once the share falls below
``prune_min``; skeleton weights (stem, reductions, head) and batch-norm parameters are never
pruned. Pruning in one shot after training, without the retraining, costs a small candidate
most of its accuracy (measured on MNIST-1D: 0.65 -> 0.30 at 50%), which is why it happens
mid-training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import entropy_taylor_importance, output_entropy
from wpl_nas.strategies.quadratic import FORM_HELP, GLOBAL_HELP, QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

__all__ = ["ANPyCOptions", "ANPyCStrategy"]


@dataclass
class ANPyCOptions(Options):
    """Adversarial neural pruning and synaptic consolidation (Peng et al., TNNLS 2021).

    Importance Ω = max(0, g·θ + ½θ²g²) with g the gradient of the output entropy (label
    free), accumulated by element-wise max. Part way through a candidate's training
    (``prune_at``), a share ``prune`` of its cell weights that no earlier candidate protects
    (Ω = 0) and that matter least to it is set to zero and held there for the rest of its
    training, freeing them for later candidates; the share shrinks by ``prune_decay`` with
    every consolidated candidate: 50%, 40%, 32%, 25.6%, ...
    """

    resumable = ("lam",)  # its strength may change on resume
    positive = ("batches", "batch_size")
    non_negative = ("lam", "prune_min")
    unit = ("prune", "prune_decay", "prune_at")

    lam: float = opt(3.0, "Strength λ of λ·Σ Ω(θ−θ*)² (the paper's value).")
    batches: int = opt(4, "Held-out batches used to estimate the importance.")
    batch_size: int = opt(100, "Batch size for the importance estimate (the paper's 100).")
    prune: float = opt(0.5, "Share of the first candidate's free cell weights pruned (0: off; the paper's 50%).")
    prune_decay: float = opt(0.8, "The pruned share is multiplied by this after each candidate (the paper's 0.8).")
    prune_min: float = opt(0.01, "Pruning stops once the share falls below this.")
    prune_at: float = opt(0.5, "When a candidate prunes, as a fraction of its training steps; the steps after "
                               "it retrain the candidate with the pruned weights held at zero.")
    form: str = opt("proximal", FORM_HELP, choices=("proximal", "gradient"))
    include_global: bool = opt(False, GLOBAL_HELP + " Pruning never touches them.")


@STRATEGIES.register("anpyc")
class ANPyCStrategy(QuadraticStrategy):
    """Label-free importance with max accumulation, plus pruning of free, unimportant weights.

    Buffers beyond the base's: ``pruned`` (how many weights have been zeroed so far).

    Args:
        supernet: The supernet to protect.
        options: :class:`ANPyCOptions`.
    """

    Options = ANPyCOptions
    options: ANPyCOptions
    pruned: torch.Tensor

    def __init__(self, supernet: Supernet, options: ANPyCOptions | None = None) -> None:
        super().__init__(supernet, options)
        self.register_buffer("pruned", torch.zeros((), dtype=torch.long))
        self.acts_on_first_candidate = self.options.prune > 0  # it prunes the first candidate too
        self._prune_step = -1  # global step of this candidate at which it prunes (-1: it does not)
        self._held: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # (params, keep masks)

    def strength(self, trial_index: int) -> float:
        return 2.0 * self.options.lam

    def fold(self) -> str:
        return "max"

    def prune_fraction(self, index: int) -> float:
        """The share pruned from the ``index``-th consolidated candidate (0 once below prune_min)."""
        o = self.options
        fraction = o.prune * o.prune_decay ** index
        return fraction if fraction >= o.prune_min else 0.0

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        return entropy_taylor_importance(ctx.supernet, names, held_out, batch_size=o.batch_size, batches=o.batches,
                                         scale=ctx.measuring_scale())

    def before_candidate(self, ctx: CandidateContext) -> None:
        super().before_candidate(ctx)
        self._held = None
        total = ctx.budget
        self._prune_step = int(self.options.prune_at * total) if self.prune_fraction(int(self.consolidated)) else -1

    def after_backward(self, ctx: CandidateContext) -> None:
        super().after_backward(ctx)
        if ctx.epoch * ctx.steps_per_epoch + ctx.step == self._prune_step and ctx.batch is not None:
            self._prune(ctx, ctx.batch[0])

    @torch.no_grad()
    def after_step(self, ctx: CandidateContext) -> None:
        super().after_step(ctx)
        if self._held is not None:  # the retraining keeps pruned weights at zero
            torch._foreach_mul_(*self._held)

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        self._held, self._prune_step = None, -1
        super().after_candidate(ctx, held_out)

    def _prune(self, ctx: CandidateContext, x: torch.Tensor) -> None:
        fraction = self.prune_fraction(int(self.consolidated))
        names = [n for n, p in ctx.params.items() if Supernet.is_searchable(n) and p.dim() > 1]
        params = [ctx.params[n] for n in names]
        if not params:  # a cell of parameter-free ops: nothing to prune
            return
        with torch.enable_grad():
            grads = ctx.grad(output_entropy(ctx.supernet(x), x), params)  # loss-scaled in fp16
        held: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        with torch.no_grad():
            for name, param, g in zip(names, params, grads, strict=True):
                if g is None:  # a dead branch: nothing to learn about it
                    continue
                score = (g * param + 0.5 * param.square() * g.square()).clamp_min_(0.0).flatten()
                free_at = (self.importance(name) == 0).flatten().nonzero().squeeze(1)
                k = int(fraction * free_at.numel())
                if k == 0:
                    continue
                # Exactly k weights: ties at importance 0 are common after the max(0, ·) clip.
                order = torch.argsort(score[free_at], stable=True)
                keep = torch.ones_like(score)
                keep[free_at[order[:k]]] = 0.0
                keep = keep.view_as(param)
                param.mul_(keep)
                if param.grad is not None:
                    param.grad.mul_(keep)
                momentum = ctx.optimizer.state.get(param, {}).get("momentum_buffer")
                if momentum is not None:  # a stale velocity would move the pruned weights
                    momentum.mul_(keep)
                held[0].append(param)
                held[1].append(keep)
                self.pruned += k
        self._held = held if held[0] else None
