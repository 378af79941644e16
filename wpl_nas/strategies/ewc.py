"""``ewc`` and ``online-ewc``: elastic weight consolidation, exact and online.

- ``ewc`` (Kirkpatrick et al., PNAS 2017) keeps one penalty λ/2·F_k(θ − θ*_k)² per earlier
  candidate. Their sum is one quadratic, Ω = Σ F_k around the Fisher-weighted mean anchor, so
  the exact multi-penalty form costs O(parameters) memory, not O(candidates × parameters).
- ``online-ewc`` (Schwarz et al., "Progress & Compress", ICML 2018) keeps a γ-decayed running
  Fisher F̃ ← γF̃ + F and a single anchor, the latest consolidated weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import empirical_fisher
from wpl_nas.strategies.quadratic import FORM_HELP, GLOBAL_HELP, PER_SAMPLE_HELP, QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES

__all__ = ["EWCOptions", "EWCStrategy", "OnlineEWCOptions", "OnlineEWCStrategy"]


@dataclass
class EWCOptions(Options):
    """Elastic weight consolidation (Kirkpatrick et al., PNAS 2017), one penalty per earlier candidate.

    The sum of the per-candidate penalties Σ_k λ/2·F_k(θ−θ*_k)² equals one quadratic with
    Ω = Σ F_k and the Fisher-weighted mean anchor θ* = Σ F_kθ*_k / Σ F_k (plus a constant), so
    the exact multi-penalty EWC is kept in O(parameters) memory however many candidates.
    """

    resumable = ("lam",)  # its strength may change on resume
    positive = ("fisher_batches", "fisher_batch_size")
    non_negative = ("lam",)

    lam: float = opt(5000.0, "Strength λ of λ/2·Σ F(θ−θ*)² (the HAT repository's tuned EWC value).")
    form: str = opt("proximal", FORM_HELP, choices=("proximal", "gradient"))
    fisher_batches: int = opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = opt(32, "Batch size for the Fisher estimate.")
    per_sample: bool = opt(True, PER_SAMPLE_HELP)
    include_global: bool = opt(True, GLOBAL_HELP)


@dataclass
class OnlineEWCOptions(Options):
    """Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): F̃ ← γF̃ + F, one anchor."""

    resumable = ("lam",)  # its strength may change on resume
    positive = ("fisher_batches", "fisher_batch_size")
    non_negative = ("lam",)
    unit = ("gamma",)

    lam: float = opt(5000.0, "Strength λ of λ/2·Σ F̃(θ−θ*)².")
    gamma: float = opt(0.9, "Decay γ of the running Fisher F̃ ← γF̃ + F (the paper uses γ close to 1).")
    form: str = opt("proximal", FORM_HELP, choices=("proximal", "gradient"))
    fisher_batches: int = opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = opt(32, "Batch size for the Fisher estimate.")
    per_sample: bool = opt(True, PER_SAMPLE_HELP)
    include_global: bool = opt(True, GLOBAL_HELP)


class _FisherStrategy(QuadraticStrategy):
    """A quadratic strategy whose importance is the empirical Fisher of the candidate."""

    options: EWCOptions | OnlineEWCOptions

    def strength(self, trial_index: int) -> float:
        return self.options.lam

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        return empirical_fisher(ctx.supernet, names, held_out, batch_size=o.fisher_batch_size,
                                batches=o.fisher_batches, per_sample=o.per_sample, scale=ctx.measuring_scale())


@STRATEGIES.register("ewc")
class EWCStrategy(_FisherStrategy):
    """EWC with one penalty per consolidated candidate, folded exactly into one quadratic.

    Args:
        supernet: The supernet to protect.
        options: :class:`EWCOptions`.
    """

    Options = EWCOptions

    def fold(self) -> str:
        return "merge"


@STRATEGIES.register("online-ewc")
class OnlineEWCStrategy(_FisherStrategy):
    """Online EWC: a γ-decayed running Fisher and the latest weights as the single anchor.

    Args:
        supernet: The supernet to protect.
        options: :class:`OnlineEWCOptions`.
    """

    Options = OnlineEWCOptions
    options: OnlineEWCOptions

    def fold(self) -> str:
        return "decay"

    def decay(self) -> float:
        return self.options.gamma
