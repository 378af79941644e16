"""Two strategies of different kinds applied together (``hat+distill``, ``wpl+distill``)."""

from __future__ import annotations

import torch
from torch import nn

from wpl_nas.strategies.base import Batches, CandidateContext, Strategy
from wpl_nas.supernet import Supernet

__all__ = ["CompositeStrategy"]


class CompositeStrategy(Strategy):
    """Runs each hook of its parts in turn; built by ``create_strategy("a+b", ...)``.

    Parts run in the order given, except that an isolation strategy (HAT) always runs last.

    Gradient edits add up (a penalty gradient and a distillation gradient), then weight edits
    apply in order (a proximal pull, then nothing else touches the weights). Each part keeps its
    own state under ``parts.<i>.`` in the state dict. The reported penalty is the sum of the
    parts' penalties.
    """

    def __init__(self, supernet: Supernet, parts: list[Strategy]) -> None:
        super().__init__(supernet)
        # Isolation (HAT) goes last: its gradient masks and weight pinning must see every
        # other part's edits, or a distillation gradient would reach protected units.
        parts = sorted(parts, key=lambda part: part.family == "isolation")
        self.parts = nn.ModuleList(parts)
        self._parts = parts
        tags = [p.penalty_tag.split("/")[0] for p in parts if p.penalty_tag]
        self.penalty_tag = "+".join(tags) + "/penalty" if tags else None  # e.g. "wpl+distill/penalty"
        self.changes_forward = any(p.changes_forward for p in parts)
        self.acts_on_first_candidate = any(p.acts_on_first_candidate for p in parts)

    def before_candidate(self, ctx: CandidateContext) -> None:
        for part in self._parts:
            part.before_candidate(ctx)

    def after_backward(self, ctx: CandidateContext) -> None:
        for part in self._parts:
            part.after_backward(ctx)

    def after_step(self, ctx: CandidateContext) -> None:
        for part in self._parts:
            part.after_step(ctx)

    def penalty(self, ctx: CandidateContext) -> float | None:
        values = [v for v in (part.penalty(ctx) for part in self._parts) if v is not None]
        return sum(values) if values else None

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        for part in self._parts:
            part.after_candidate(ctx, held_out)

    def trainable_tensors(self) -> list[torch.Tensor]:
        return [t for part in self._parts for t in part.trainable_tensors()]
