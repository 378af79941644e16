"""What the replay strategies (``distill``, ``synthetic``) share.

Both keep a :class:`~wpl_nas.strategies.protected.ProtectedSet` of earlier candidates and, on
each training step of a later candidate, distil one or more of them: the live supernet runs the
protected candidate's path on some inputs (the current batch, or a learned synthetic set) and is
pulled towards that candidate's remembered outputs. This module holds the distillation loss, the
"distil another candidate on these inputs" step, and a base class with the protected set, the
round-robin choice of which candidate to replay, the logged loss and the state encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.spaces import Architecture
from wpl_nas.strategies.base import Batches, CandidateContext, Strategy, StrategyFamily
from wpl_nas.strategies.protected import ProtectedSet
from wpl_nas.supernet import Supernet

__all__ = ["Member", "ReplayStrategy", "decode_state", "distil_on", "encode_state", "kd_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss ``T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, batch mean.

    The T² factor keeps the gradient's scale independent of T (Hinton et al., 2015), so λ means
    the same at every temperature.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def distil_on(ctx: CandidateContext, arch: Architecture, x: torch.Tensor, targets: torch.Tensor, *,
              lam: float, temperature: float, off_path: list[nn.Parameter]) -> torch.Tensor:
    """Distil candidate ``arch`` on inputs ``x`` towards ``targets`` (its remembered logits).

    The student is the live supernet under ``arch`` (with grad); ``λ·KD`` is back-propagated
    (:meth:`~wpl_nas.strategies.base.CandidateContext.backward`, loss-scaled in fp16), adding to the
    ``.grad`` the current candidate's own loss left. The student also runs tensors
    that are off the *current* candidate's path (``arch``'s private ops); their gradients are
    dropped (``.grad = None``) so those tensors never move, and the supernet's previous
    architecture is restored.

    Args:
        ctx: The current candidate's context (its supernet, with the current candidate chosen).
        arch: The candidate to distil (a protected, earlier one).
        x: Inputs it is distilled on.
        targets: Its remembered logits on ``x`` (no grad).
        lam: Weight λ of the loss.
        temperature: Softmax temperature T.
        off_path: The parameters ``arch`` uses that are off the current candidate's path.

    Returns:
        The weighted loss ``λ·KD``, detached (for logging).
    """
    supernet = ctx.supernet
    with supernet.use(arch):
        loss = lam * kd_loss(supernet(x), targets, temperature)
    ctx.backward(loss)
    for p in off_path:
        p.grad = None
    return loss.detach()


def encode_state(obj: Any) -> torch.Tensor:
    """JSON-able ``obj`` as a uint8 tensor: extra state that ``torch.equal`` can compare and
    that loads without pickling."""
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def decode_state(state: torch.Tensor) -> Any:
    """Inverse of :func:`encode_state`."""
    return json.loads(bytes(state.cpu().tolist()).decode())


@dataclass
class Member:
    """A protected candidate as replayed while the current one trains.

    Attributes:
        arch: The protected candidate.
        off_path: Parameters it uses that are off the current path (their grads are dropped).
        data: What the strategy precomputed for it (teacher tensors, a synthetic-set slot).
    """

    arch: Architecture
    off_path: list[nn.Parameter]
    data: Any = None


@dataclass
class _Plan:
    """The replay schedule of the current candidate, fixed in ``before_candidate``."""

    members: list[Member]
    cursor: int = 0
    loss_sum: torch.Tensor | None = None
    count: int = 0


class ReplayStrategy(Strategy):
    """Base of the replay strategies: a protected set, round-robin replay, the logged loss.

    Subclasses set ``per_step`` (how many members a step replays), implement :meth:`prepare`
    (per-member precomputation, once per candidate), :meth:`replay` (one distillation step),
    :meth:`admit` and :meth:`drop` (keep their buffers in line with the protected set), and may
    add JSON-able entries to the extra state with :meth:`extra_state`/:meth:`load_extra_state`.

    Members eligible for replay while candidate ``c`` trains: protected candidates other than
    ``c`` that share at least one tensor with ``c``'s path (the others cannot be disturbed by
    ``c``). They are replayed in round robin, restarting at the oldest for each candidate, so a
    run resumed between candidates replays exactly what an uninterrupted one would.

    Args:
        supernet: The supernet to protect.
        options: The strategy's options.
        capacity: Size of the protected set.
    """

    family: ClassVar[StrategyFamily] = "replay"

    def __init__(self, supernet: Supernet, options: Any, *, capacity: int) -> None:
        super().__init__(supernet, options)
        self.protected = ProtectedSet(capacity)
        self._plan: _Plan | None = None

    # --- for subclasses ----------------------------------------------------------------------
    @property
    def per_step(self) -> int:
        """Members replayed on each training step."""
        return 1

    @property
    def active(self) -> bool:
        """False when the strategy is switched off by its options (λ = 0)."""
        return True

    def prepare(self, ctx: CandidateContext, arch: Architecture) -> Any:
        """Per-member data for replaying ``arch`` while ``ctx.arch`` trains (in ``before_candidate``)."""
        return None

    def replay(self, ctx: CandidateContext, member: Member) -> torch.Tensor:
        """Distil ``member`` once (backward included); return its detached loss."""
        raise NotImplementedError

    def admit(self, ctx: CandidateContext, held_out: Batches) -> bool:
        """Store what replaying the freshly admitted ``ctx.arch`` needs; False to give it up."""
        return True

    def drop(self, arch: Architecture) -> None:
        """Forget what was stored for ``arch`` (released from the protected set)."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- hooks -------------------------------------------------------------------------------
    def before_candidate(self, ctx: CandidateContext) -> None:
        self._plan = None
        if not self.active or not len(self.protected):
            return
        net = ctx.supernet
        current = set(ctx.params)
        params = dict(net.named_parameters())
        members = []
        for arch in self.protected.members:
            if arch == ctx.arch:
                continue
            names = net.parameter_names_of(arch)
            if not any(n in current for n in names):
                continue  # nothing of it can move while this candidate trains
            off = [params[n] for n in names if n not in current]
            members.append(Member(arch, off, self.prepare(ctx, arch)))
        if members:
            self._plan = _Plan(members)

    def after_backward(self, ctx: CandidateContext) -> None:
        plan = self._plan
        if plan is None:
            return
        n = len(plan.members)
        for _ in range(min(self.per_step, n)):
            member = plan.members[plan.cursor % n]
            plan.cursor += 1
            loss = self.replay(ctx, member)
            # Summed on the device: no host sync per step; read once per epoch by penalty().
            plan.loss_sum = loss if plan.loss_sum is None else plan.loss_sum + loss
            plan.count += 1

    def penalty(self, ctx: CandidateContext) -> float | None:
        """Mean replayed distillation loss (λ included) since the last call; 0.0 with nothing to replay."""
        plan = self._plan
        if plan is None or plan.loss_sum is None or plan.count == 0:
            return 0.0
        value = plan.loss_sum.item() / plan.count
        plan.loss_sum, plan.count = None, 0
        return value

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        self._plan = None
        if not self.active:
            return
        admitted, released = self.protected.offer(ctx.arch, ctx.score)
        for arch in released:
            self.drop(arch)
        if admitted and not self.admit(ctx, held_out):
            self.protected.release(ctx.arch)
            self.drop(ctx.arch)

    # --- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> torch.Tensor:
        return encode_state({"protected": self.protected.state_dict(), **self.extra_state()})

    def set_extra_state(self, state: Any) -> None:
        decoded = decode_state(state)
        self.protected.load_state_dict(decoded.pop("protected"))
        self.load_extra_state(decoded)
        self._plan = None
