"""The strategy interface: hooks around the sequential training of candidates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from wpl_nas import configs
from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

if TYPE_CHECKING:  # wpl_nas.training imports this module
    from wpl_nas.training.precision import MeasuringScale

__all__ = ["Batches", "CandidateContext", "Strategy", "StrategyFamily"]

#: ``held_out(batch_size, num_batches)`` yields ``(x, y)`` batches of held-out training data
#: (the validation split, never the test split), already on the supernet's device.
Batches = Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


#: What a strategy does to the supernet; two strategies combine only if their families differ.
StrategyFamily = Literal["none", "quadratic", "isolation", "replay"]


@dataclass
class CandidateContext:
    """What a strategy sees of the candidate being trained.

    The trainer keeps the progress fields up to date: ``batch``, ``epoch`` and ``step`` are
    those of the step whose hooks are running.

    Attributes:
        supernet: The supernet, with ``arch`` chosen.
        arch: The candidate (its path and, on a multi-head supernet, its head).
        trial_index: Its position in the search: the number of candidates finished before it (equal to
            the Optuna trial number unless a trial was lost in flight).
        params: ``{name: parameter}`` of the tensors on the candidate's path.
        optimizer: The optimiser of the shared weights (one for the whole search).
        epochs: Epochs this candidate trains for (with a step budget, the epochs it starts: the last
            may stop part way).
        steps_per_epoch: Training steps of a whole epoch.
        total_steps: The candidate's budget of training steps (``--steps``); 0: ``epochs`` whole
            epochs. :attr:`budget` and :meth:`steps_in_epoch` give the steps it really trains.
        epoch: Current epoch (0-based).
        step: Current step within the epoch (0-based).
        batch: The current training batch ``(x, y)``, set before ``after_backward``.
        score: The candidate's score right after its training; set before ``after_candidate``
            (None if it was not scored).
        scaler: The trainer's fp16 gradient scaler (None in fp32 and bf16): strategies do not use it
            directly but through :meth:`backward`, :meth:`grad` and :meth:`measuring_scale`.
    """

    supernet: Supernet
    arch: Architecture
    trial_index: int
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    epochs: int = 1
    steps_per_epoch: int = 1
    total_steps: int = 0
    epoch: int = 0
    step: int = 0
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    score: float | None = None
    scaler: torch.amp.GradScaler | None = None

    def backward(self, loss: torch.Tensor, *, inputs: Sequence[torch.Tensor] | None = None) -> None:
        """Back-propagate a strategy's own ``loss`` in ``after_backward``, adding its gradient to ``.grad``.

        The one correct way to do it at every precision: ``loss.backward()`` in fp32 and bf16; in fp16
        the loss is scaled like the candidate's, its gradient unscaled before it is added, and a
        non-finite one skips the step and backs the scale off, as the scaler does for the candidate's
        (:func:`~wpl_nas.training.precision.scaled_backward`). A plain ``loss.backward()`` there would
        flush small gradients to zero.

        Args:
            loss: A scalar computed with grad.
            inputs: The tensors to differentiate [default: every parameter the loss reaches].
        """
        if self.scaler is None:
            loss.backward(inputs=inputs)
            return
        # Imported here: wpl_nas.training imports this module; fp16 has created a trainer by now.
        from wpl_nas.training.precision import scaled_backward
        scaled_backward(loss, scaler=self.scaler, optimizer=self.optimizer, inputs=inputs)

    def grad(self, output: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """``torch.autograd.grad(output, inputs, allow_unused=True)``, loss-scaled in fp16 so that small
        gradients survive: for gradients a strategy measures (a pruning score) rather than adds."""
        if self.scaler is None:
            return torch.autograd.grad(output, inputs, allow_unused=True)
        from wpl_nas.training.precision import scaled_grad
        return scaled_grad(output, inputs, scaler=self.scaler)

    def measuring_scale(self) -> MeasuringScale | None:
        """The loss scale of the gradients a strategy measures in ``after_candidate`` (its importance:
        Fisher, MAS, synthetic sets' meta-gradients), for the functions of
        :mod:`~wpl_nas.strategies.importance` (``scale=``): None in fp32 and bf16, where gradients are
        computed as they are; in fp16 a fresh :class:`~wpl_nas.training.precision.MeasuringScale` from
        the scaler's current scale, so that small gradients survive fp16's range."""
        if self.scaler is None:
            return None
        from wpl_nas.training.precision import MeasuringScale
        return MeasuringScale(self.scaler.get_scale())

    @property
    def budget(self) -> int:
        """The training steps this candidate takes in all: ``total_steps``, or whole epochs."""
        return self.total_steps or self.epochs * self.steps_per_epoch

    def steps_in_epoch(self, epoch: int) -> int:
        """How many steps epoch ``epoch`` (0-based) runs: ``steps_per_epoch``, fewer in the last epoch of
        a step budget that stops part way, 0 past the budget."""
        return max(0, min(self.steps_per_epoch, self.budget - epoch * self.steps_per_epoch))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class Strategy(nn.Module):
    """Base class of consolidation strategies.

    A strategy is an ``nn.Module`` so that its state (importances, anchors) lives in
    registered buffers: ``state_dict()`` saves it with the run and ``.to(device)`` moves it.
    The trainer calls, for each candidate in turn::

        before_candidate(ctx)                   # once, path fixed
        for each epoch:
            for each training batch:
                loss.backward()                 # fp16: scaled, then unscaled, before after_backward
                after_backward(ctx)             # may edit p.grad (e.g. a closed-form penalty gradient)
                                                # and back-propagate its own loss: ctx.backward(loss)
                optimizer.step()                # fp16: skipped if a gradient was not finite
                after_step(ctx)                 # may edit the weights (e.g. a proximal pull)
            penalty(ctx)                        # the penalty's current value, for logging only
        after_candidate(ctx, held_out)          # once, after training and scoring: consolidate it

    Every hook defaults to doing nothing, which is the ``naive`` strategy. Hooks are called
    with autograd enabled (a distillation term backpropagates its own loss); hooks that edit
    weights or gradients in place do so under ``torch.no_grad()``. Forward passes in hooks run under
    the trainer's autocast; in the training hooks a strategy's own backward goes through
    :meth:`CandidateContext.backward` (and gradients it only measures through
    :meth:`CandidateContext.grad`), never ``loss.backward()`` or ``torch.autograd.grad`` directly, so
    that fp16's loss scaling applies to it as well. Gradients measured in ``after_candidate`` (Fisher
    and the like) are loss-scaled through :meth:`CandidateContext.measuring_scale`.

    Contract (checked for every registered strategy by the shared test suite): before any
    candidate is consolidated the strategy changes nothing (except where it reshapes the
    forward pass, ``changes_forward``, or acts on the first candidate by design,
    ``acts_on_first_candidate``); parameters off the
    current path never move; no NaN; ``state_dict`` round-trips exactly; seeded runs repeat;
    a search resumed from a checkpoint equals an uninterrupted one.

    Args:
        supernet: The supernet whose weights the strategy protects.
        options: The strategy's options dataclass (``Options``), if it has one [default: its
            defaults]; validated here.
    """

    #: Options dataclass of the strategy, or None. It becomes the config section named after the
    #: strategy's registry name (``--wpl-alpha``, ``wpl: {alpha: ...}``); see ``wpl_nas.configs``.
    Options: ClassVar[type[configs.Options] | None] = None
    #: TensorBoard tag of the penalty, or None if the strategy adds none.
    penalty_tag: str | None = None
    #: Kind of protection; ``a+b`` composes two strategies only from different families.
    family: ClassVar[StrategyFamily] = "none"
    #: True if the strategy changes what the supernet computes for a candidate (HAT's gates),
    #: so that scoring a candidate needs the strategy attached.
    changes_forward: bool = False
    #: True if the strategy changes how even the first candidate trains (ANPyC prunes it);
    #: such strategies are exempt from the "no effect before consolidation" contract.
    acts_on_first_candidate: bool = False

    def __init__(self, supernet: Supernet, options: Any = None) -> None:
        super().__init__()
        if options is None and self.Options is not None:
            options = self.Options()
        self.options: Any = options.validate() if options is not None else None

    def before_candidate(self, ctx: CandidateContext) -> None:
        """Called once before the candidate's first training step."""

    def after_backward(self, ctx: CandidateContext) -> None:
        """Called after each ``loss.backward()``, before the optimiser step."""

    def penalty(self, ctx: CandidateContext) -> float | None:
        """The strategy's penalty at the current weights (None: it has none). Called at the end
        of each epoch for logging; kept off the per-step path because no update needs it."""
        return None

    def after_step(self, ctx: CandidateContext) -> None:
        """Called after each optimiser step."""

    def after_candidate(self, ctx: CandidateContext, held_out: Batches) -> None:
        """Called once after the candidate is trained (and scored)."""

    def trainable_tensors(self) -> list[torch.Tensor]:
        """Tensors outside the optimiser that the training forward pass gives a gradient (HAT's gate
        embedding); a data-parallel trainer sums their gradients over the ranks with the path's."""
        return []
