"""``mas``: memory aware synapses (Aljundi et al., ECCV 2018).

Importance without labels: Ω = E_x |∂‖f(x)‖²/∂θ|, how much the output's magnitude depends on
each weight. Folded as Ω ← αΩ + (1 − α)Ω_new (a tensor's first importance is taken as is).
The paper's penalty λ·Σ Ω(θ − θ*)² has no ½, so α here (the base's strength) is 2λ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import mas_importance
from wpl_nas.strategies.quadratic import FORM_HELP, GLOBAL_HELP, PER_SAMPLE_HELP, QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES

__all__ = ["MASOptions", "MASStrategy"]


@dataclass
class MASOptions(Options):
    """Memory aware synapses (Aljundi et al., ECCV 2018): label-free importance E|∂‖f(x)‖²/∂θ|."""

    resumable = ("lam",)  # its strength may change on resume
    positive = ("batches", "batch_size")
    non_negative = ("lam",)
    unit = ("alpha",)

    lam: float = opt(1.0, "Strength λ of λ·Σ Ω(θ−θ*)².")
    alpha: float = opt(0.5, "Ω ← αΩ + (1−α)Ω_new when a candidate is consolidated (Avalanche's default).")
    batches: int = opt(8, "Held-out batches used to estimate the importance.")
    batch_size: int = opt(32, "Batch size for the importance estimate.")
    per_sample: bool = opt(True, PER_SAMPLE_HELP)
    form: str = opt("proximal", FORM_HELP, choices=("proximal", "gradient"))
    include_global: bool = opt(True, GLOBAL_HELP)


@STRATEGIES.register("mas")
class MASStrategy(QuadraticStrategy):
    """Label-free importance from the gradient of the squared output norm.

    Args:
        supernet: The supernet to protect.
        options: :class:`MASOptions`.
    """

    Options = MASOptions
    options: MASOptions

    def strength(self, trial_index: int) -> float:
        return 2.0 * self.options.lam

    def fold(self) -> str:
        return "ema"

    def decay(self) -> float:
        return self.options.alpha

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        return mas_importance(ctx.supernet, names, held_out, batch_size=o.batch_size, batches=o.batches,
                              per_sample=o.per_sample, scale=ctx.measuring_scale())
