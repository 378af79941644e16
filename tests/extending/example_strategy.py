"""``example-l2``: a one-file strategy, the example of README's "Extending wpl-nas: a strategy".

After each candidate trains, the weights on its path are anchored (θ* ← θ); a later candidate
pays λ/2·‖θ − θ*‖² on the anchored weights it shares (an unweighted cousin of EWC and WPL). The
name is written once, in the decorator; the options class becomes the config section
``example_l2`` and the flag ``--example-l2-lam`` by itself.

Dropped into ``wpl_nas/strategies/`` it registers when the package is imported; anywhere else,
importing the file registers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wpl_nas.configs import Options, opt
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.strategies.flat import FlatLayout
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

__all__ = ["ExampleL2Options", "ExampleL2Strategy"]


@dataclass
class ExampleL2Options(Options):
    """A plain L2 pull towards the weights of the candidates trained before."""

    non_negative = ("lam",)  # checked by validate(): "example_l2.lam must be >= 0"
    resumable = ("lam",)  # may change when a search is resumed

    lam: float = opt(1.0, "Strength λ of the pull λ/2·‖θ − θ*‖² on the shared weights.")


@STRATEGIES.register("example-l2")
class ExampleL2Strategy(Strategy):
    """An L2 pull of the shared weights towards where earlier candidates left them."""

    Options = ExampleL2Options
    family = "quadratic"  # combines with isolation and replay strategies, not with another penalty
    penalty_tag = "example-l2/penalty"

    options: ExampleL2Options
    anchor: torch.Tensor
    anchored: torch.Tensor

    def __init__(self, supernet: Supernet, options: ExampleL2Options | None = None) -> None:
        super().__init__(supernet, options)  # None: the defaults; validated there
        self.layout = FlatLayout(supernet)
        # Buffers: saved with the run's checkpoint and moved by .to(device).
        self.register_buffer("anchor", self.layout.zeros())
        self.register_buffer("anchored", self.layout.zeros())  # 1 where a weight has an anchor

    def after_backward(self, ctx: CandidateContext) -> None:
        with torch.no_grad():
            for name, p in ctx.params.items():
                if p.grad is not None:
                    pull = self.layout.view(self.anchored, name) * (p - self.layout.view(self.anchor, name))
                    p.grad.add_(pull, alpha=self.options.lam)

    def penalty(self, ctx: CandidateContext) -> float | None:
        with torch.no_grad():
            total = sum(float((self.layout.view(self.anchored, n) * (p - self.layout.view(self.anchor, n)) ** 2).sum())
                        for n, p in ctx.params.items())
        return self.options.lam / 2 * total

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        with torch.no_grad():
            for name, p in ctx.params.items():
                self.layout.view(self.anchor, name).copy_(p)
                self.layout.view(self.anchored, name).fill_(1.0)
