"""``distill``: keep earlier candidates' outputs close on the current batches (LwF, Li & Hoiem, ECCV 2016).

In weight-sharing NAS every candidate trains on the same data, so an earlier candidate's
outputs on the current batch are its "old task" outputs: distilling them is nearly free of
data and protects the *function* of the shared weights rather than their values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from wpl_nas.configs import Options, opt
from wpl_nas.spaces import Architecture
from wpl_nas.strategies._replay import Member, ReplayStrategy, distil_on
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.flat import FlatLayout
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

__all__ = ["DistillOptions", "DistillStrategy"]


@dataclass
class DistillOptions(Options):
    """Distillation from earlier candidates (LwF-style, Li & Hoiem, ECCV 2016)."""

    resumable = ("lam",)  # its strength may change on resume
    positive = ("temperature", "protect", "teachers_per_step")
    non_negative = ("lam",)

    lam: float = opt(1.0, "Weight λ of the distillation loss (Avalanche's LwF default).")
    temperature: float = opt(2.0, "Softmax temperature T of the distillation targets.")
    protect: int = opt(5, "Teachers: the best candidates (by score at training) whose outputs are kept close.")
    teachers_per_step: int = opt(1, "Teachers distilled on each training batch (round robin among "
                                    "those sharing weights with the current candidate).")


@STRATEGIES.register("distill")
class DistillStrategy(ReplayStrategy):
    """Distillation from the protected earlier candidates on the current training batch.

    After a candidate is trained it is offered to a protected set (the best ``protect`` by
    score); admitted, its path tensors are copied into one flat buffer of teacher weights.
    While a later candidate ``c`` trains, each step distils ``teachers_per_step`` teachers (round
    robin among protected candidates sharing a tensor with ``c``'s path): the teacher's logits
    come from ``torch.func.functional_call`` of the supernet on the teacher weights (no grad),
    the student's from the live supernet under the teacher's architecture, and
    ``λ·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` is back-propagated into the shared
    weights (summed over the step's teachers, as LwF sums over old tasks). Gradients that land
    on the teacher's private tensors are dropped, so weights off ``c``'s path never move.

    Approximation: one flat copy of the weights serves every teacher, so a tensor shared by two
    teachers holds the values of the one consolidated later. Exact per-teacher copies would cost
    O(protect × parameters); this costs O(parameters) whatever the number of teachers. The
    later teacher was itself trained while the earlier one was distilled, which kept the shared
    tensors' values reproducing the earlier teacher, so the drift is that of one distilled
    candidate rather than of an unprotected one. Released teachers' tensors stay in the buffer
    unused until an admitted candidate overwrites them.

    Cost: memory, one copy of the supernet's weights (``teacher``). Compute, per training step
    and teacher, one forward without grad and one forward-backward of the batch: with one
    teacher a step costs ≈ 2.3× a plain one (measured on a tiny MNIST-1D space, one CPU thread).
    Consolidation only copies a path (no data pass).

    Buffers: ``teacher`` (flat weights). The protected set (architectures and scores) is the
    module's extra state.

    Args:
        supernet: The supernet to protect.
        options: :class:`DistillOptions`.
    """

    Options = DistillOptions
    penalty_tag = "distill/loss"
    options: DistillOptions
    teacher: torch.Tensor

    def __init__(self, supernet: Supernet, options: DistillOptions | None = None) -> None:
        options = options or DistillOptions()
        options.validate()
        super().__init__(supernet, options, capacity=options.protect)
        self.layout = FlatLayout(supernet)
        self.register_buffer("teacher", self.layout.zeros())

    def teacher_of(self, name: str) -> torch.Tensor:
        """The teacher weights of parameter ``name`` (a view; do not modify)."""
        return self.layout.view(self.teacher, name)

    @property
    def per_step(self) -> int:
        return self.options.teachers_per_step

    @property
    def active(self) -> bool:
        return self.options.lam > 0

    def prepare(self, ctx: CandidateContext, arch: Architecture) -> dict[str, torch.Tensor]:
        # Views of the teacher buffer for the teacher's path: functional_call swaps them in.
        return {name: self.teacher_of(name) for name in ctx.supernet.parameter_names_of(arch)}

    def replay(self, ctx: CandidateContext, member: Member) -> torch.Tensor:
        assert ctx.batch is not None, "the trainer sets ctx.batch before after_backward"
        x = ctx.batch[0]
        net = ctx.supernet
        with torch.no_grad(), net.use(member.arch):
            targets = functional_call(net, member.data, (x,))
        return distil_on(ctx, member.arch, x, targets, lam=self.options.lam,
                         temperature=self.options.temperature, off_path=member.off_path)

    @torch.no_grad()
    def admit(self, ctx: CandidateContext, held_out: Batches) -> bool:
        params: dict[str, nn.Parameter] = ctx.params
        for name, p in params.items():
            self.teacher_of(name).copy_(p)
        return True
