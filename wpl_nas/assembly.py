"""One assembly of the training parts: supernet, strategy, optimiser and trainer.

A search, the forgetting lab, stand-alone training (``wpl-nas rank``), retraining and the tests
all train through a :class:`~wpl_nas.training.CandidateTrainer` built here, so a change to how
candidates train is made once::

    supernet = build_supernet(space, data, seed=config.seed)
    parts = assemble(supernet, config, strategy=config.strategy, strategy_options=config, device=device)
    trainer = parts.trainer_for(data, epochs=config.epochs, steps=config.steps, seed=config.seed,
                                eval_samples=config.eval_samples)

``options`` is any object with the optimiser's and trainer's options as attributes (``lr``,
``momentum``, ``weight_decay``, ``batch_size``, ``grad_clip``, ``eval_batch_size``): a
:class:`~wpl_nas.config.SearchConfig`, a :class:`~wpl_nas.lab.LabConfig`, or a retraining recipe.
Four more are read where present: the fast path (:mod:`wpl_nas.training.precision`), ``precision``
and ``channels_last``; ``augment`` (random crops and flips of image batches) and ``workers`` (the
processes that decode a data set streamed from files). Options without them train in float32, in
the default memory format, unaugmented, decoding in the main process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from wpl_nas.data import DataBundle
from wpl_nas.data._bundle import take
from wpl_nas.distributed import World
from wpl_nas.errors import ConfigError
from wpl_nas.spaces import SearchSpace, load_space
from wpl_nas.strategies import Strategy, create_strategy
from wpl_nas.supernet import Supernet
from wpl_nas.training import CandidateTrainer
from wpl_nas.training.precision import resolve_channels_last, resolve_precision

__all__ = ["MAX_SUPERNET_PARAMETERS", "Assembly", "TrainingOptions", "assemble", "build_supernet",
           "check_supernet_size", "evaluation_set", "resolve_device"]

#: The most weights a supernet may hold (4 GiB in float32; the built-in spaces hold 0.1-16 million
#: on their usual data): a larger one would not fit, or take very long to build.
MAX_SUPERNET_PARAMETERS = 1_000_000_000


class TrainingOptions(Protocol):
    """The options :func:`assemble` reads (a SearchConfig, a LabConfig and a retraining recipe have them)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    grad_clip: float
    eval_batch_size: int


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else must be usable here.

    Raises:
        ConfigError: unknown device string, or a device that is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for, but MPS is not available here; use --device cpu")
    return device


def build_supernet(space: SearchSpace | str, data: DataBundle, *, seed: int = 0) -> Supernet:
    """A freshly initialised supernet of ``space`` (a space or its name / path) for ``data``.

    Raises:
        ConfigError: the space's dimensionality does not fit the data.
    """
    space = load_space(space) if isinstance(space, str) else space
    space.check_data(data.name, tuple(data.input_shape))
    torch.manual_seed(seed)
    return Supernet(space, in_channels=data.input_shape[0], num_classes=data.num_classes,
                    input_shape=tuple(data.input_shape))


def check_supernet_size(space: SearchSpace, data: DataBundle) -> None:
    """Refuse a space whose supernet for ``data`` would hold more than :data:`MAX_SUPERNET_PARAMETERS`
    weights, counted on the ``meta`` device (shapes only, no memory), before a search builds it.

    Raises:
        ConfigError: it is too large; the message gives its size and the limit.
    """
    with torch.device("meta"):
        size = sum(p.numel() for p in build_supernet(space, data).parameters())
    if size > MAX_SUPERNET_PARAMETERS:
        raise ConfigError(f"space {space.name!r} makes a supernet of {size:,} weights on {data.name!r} "
                          f"({size * 4 / 2**30:.1f} GiB in float32, several times that while training), more than "
                          f"the limit of {MAX_SUPERNET_PARAMETERS:,}; make its layers narrower or fewer")


def evaluation_set(data: DataBundle, *, samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation subset every score uses: the first ``samples`` of the validation split
    (all of it for 0), normalised, on ``device`` (held in memory even when the data set is streamed
    from image files: keep ``samples`` small for those)."""
    n = samples or len(data.val)  # type: ignore[arg-type]
    return take(data.val, torch.arange(min(n, len(data.val))), device=device)  # type: ignore[arg-type]


@dataclass
class Assembly:
    """A supernet (or stand-alone network), its strategy and the one optimiser of all its weights.

    Attributes:
        supernet: The network, on ``device``.
        strategy: Its consolidation strategy, on ``device``.
        optimizer: SGD over every weight of ``supernet``.
        options: The training options (see :class:`TrainingOptions`).
        device: Where everything lives.
        precision: The resolved precision of every forward pass: ``fp32``, ``bf16`` or ``fp16``.
        channels_last: Whether the supernet's 4-D weights and input batches are channels_last.
    """

    supernet: Supernet
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    options: TrainingOptions
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    def trainer(self, *, train_set: Dataset[Any], held_out: Dataset[Any],
                eval_set: tuple[torch.Tensor, torch.Tensor], epochs: int, seed: int,
                metric: str = "accuracy", steps: int = 0, world: World | None = None) -> CandidateTrainer:
        """A trainer of these parts on the given data (the lab gives each of its models its own);
        ``steps``: a per-candidate budget of optimiser steps instead of ``epochs`` (0: none); ``world``:
        the processes that train data-parallel (:mod:`wpl_nas.distributed`) [default: this one]."""
        o = self.options
        return CandidateTrainer(self.supernet, self.strategy, train_set=train_set, held_out=held_out,
                                eval_set=eval_set, optimizer=self.optimizer, batch_size=o.batch_size, epochs=epochs,
                                grad_clip=o.grad_clip, eval_batch_size=o.eval_batch_size, seed=seed, metric=metric,
                                steps=steps, precision=self.precision, channels_last=self.channels_last,
                                augment=bool(getattr(o, "augment", False)), workers=getattr(o, "workers", 0),
                                world=world, epoch_scores=bool(getattr(o, "epoch_scores", True)))

    def trainer_for(self, data: DataBundle, *, epochs: int, seed: int, eval_samples: int = 0,
                    steps: int = 0, world: World | None = None) -> CandidateTrainer:
        """A trainer on ``data``: its training split, its validation split held out (Fisher and the
        like) and its first ``eval_samples`` validation samples scoring (0: all)."""
        return self.trainer(train_set=data.train, held_out=data.val,
                            eval_set=evaluation_set(data, samples=eval_samples, device=self.device),
                            epochs=epochs, seed=seed, metric=data.metric, steps=steps, world=world)


def assemble(supernet: Supernet, options: TrainingOptions, *, device: torch.device | str,
             strategy: str = "naive", strategy_options: Any = None, nesterov: bool = False) -> Assembly:
    """Put ``supernet`` on ``device`` with strategy ``strategy`` and an SGD optimiser.

    Args:
        supernet: The supernet, or a stand-alone network (:meth:`Supernet.standalone`).
        options: The training options (see :class:`TrainingOptions`).
        device: Where to put it.
        strategy: A registered strategy name, or two joined by ``+``.
        strategy_options: What :func:`~wpl_nas.strategies.create_strategy` reads the strategy's
            options from: its own options, a config, or a mapping by strategy name [default: the
            strategy's defaults].
        nesterov: Nesterov momentum (retraining's recipe).

    Raises:
        ConfigError: an unknown strategy or a meaningless combination, or a precision or
            channels_last setting this device cannot use.
    """
    device = torch.device(device)
    if device.type == "cuda":
        # Input shapes are fixed within a search (one batch size, one image size), so cuDNN's one-off
        # search for the fastest convolution algorithm per shape pays for itself within a few steps.
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(getattr(options, "precision", "fp32"), device)
    if precision == "fp16" and "hat" in strategy.split("+"):
        # HAT's gate embeddings learn outside the optimiser, so fp16's gradient scaler (which unscales
        # the optimiser's gradients only) would hand them gradients 2**16 times too large.
        raise ConfigError(f"precision 'fp16' cannot train strategy {strategy!r} (HAT's gate embeddings learn outside "
                          "the optimiser, where the fp16 gradient scaler does not reach); valid choices for it: "
                          "auto, fp32, bf16")
    channels_last = resolve_channels_last(getattr(options, "channels_last", "off"), device)
    supernet = supernet.to(device)
    if channels_last:  # only 4-D weights (2-D convolutions) change; a 1-D space is left as it is
        supernet = supernet.to(memory_format=torch.channels_last)
    built = create_strategy(strategy, supernet, strategy_options).to(device)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay, nesterov=nesterov)
    return Assembly(supernet, built, optimizer, options, device, precision, channels_last)
