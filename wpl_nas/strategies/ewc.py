"""``ewc`` and ``online-ewc``: elastic weight consolidation, exact and online.

- ``ewc`` (Kirkpatrick et al., PNAS 2017) keeps one penalty λ/2·F_k(θ − θ*_k)² per earlier
  candidate. Their sum is one quadratic, Ω = Σ F_k around the Fisher-weighted mean anchor, so
  the exact multi-penalty form costs O(parameters) memory, not O(candidates × parameters).
- ``online-ewc`` (Schwarz et al., "Progress & Compress", ICML 2018) keeps a γ-decayed running
  Fisher F̃ ← γF̃ + F and a single anchor, the latest consolidated weights.
"""

from __future__ import annotations

import torch

from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.importance import empirical_fisher
from wpl_nas.strategies.quadratic import QuadraticStrategy
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.strategy_options import EWCOptions, OnlineEWCOptions
from wpl_nas.supernet import Supernet

__all__ = ["EWCStrategy", "OnlineEWCStrategy"]


class _FisherStrategy(QuadraticStrategy):
    """A quadratic strategy whose importance is the empirical Fisher of the candidate."""

    options: EWCOptions | OnlineEWCOptions

    def strength(self, trial_index: int) -> float:
        return self.options.lam

    def estimate(self, ctx: CandidateContext, names: list[str], held_out: Batches) -> list[torch.Tensor]:
        o = self.options
        return empirical_fisher(ctx.supernet, names, held_out, batch_size=o.fisher_batch_size,
                                batches=o.fisher_batches, per_sample=o.per_sample)


@STRATEGIES.register("ewc")
class EWCStrategy(_FisherStrategy):
    """EWC with one penalty per consolidated candidate, folded exactly into one quadratic.

    Args:
        supernet: The supernet to protect.
        options: :class:`~wpl_nas.strategy_options.EWCOptions`.
    """

    Options = EWCOptions

    def __init__(self, supernet: Supernet, options: EWCOptions | None = None) -> None:
        super().__init__(supernet, options or EWCOptions())

    def fold(self) -> str:
        return "merge"


@STRATEGIES.register("online-ewc")
class OnlineEWCStrategy(_FisherStrategy):
    """Online EWC: a γ-decayed running Fisher and the latest weights as the single anchor.

    Args:
        supernet: The supernet to protect.
        options: :class:`~wpl_nas.strategy_options.OnlineEWCOptions`.
    """

    Options = OnlineEWCOptions
    options: OnlineEWCOptions

    def __init__(self, supernet: Supernet, options: OnlineEWCOptions | None = None) -> None:
        super().__init__(supernet, options or OnlineEWCOptions())

    def fold(self) -> str:
        return "decay"

    def decay(self) -> float:
        return self.options.gamma
