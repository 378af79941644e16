"""The strategy interface: hooks around the sequential training of candidates."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from wpl_nas import configs
from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

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
                loss.backward()
                after_backward(ctx)             # may edit p.grad (e.g. a closed-form penalty gradient)
                optimizer.step()
                after_step(ctx)                 # may edit the weights (e.g. a proximal pull)
            penalty(ctx)                        # the penalty's current value, for logging only
        after_candidate(ctx, held_out)          # once, after training and scoring: consolidate it

    Every hook defaults to doing nothing, which is the ``naive`` strategy. Hooks are called
    with autograd enabled (a distillation term backpropagates its own loss); hooks that edit
    weights or gradients in place do so under ``torch.no_grad()``.

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
