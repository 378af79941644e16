"""The sequential candidate trainer: trains one path of the supernet at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wpl_nas.data import iterate_batches
from wpl_nas.data._bundle import in_memory, on_device
from wpl_nas.data._stream import StreamedBatches
from wpl_nas.distributed import World
from wpl_nas.errors import ConfigError, TrainingDiverged
from wpl_nas.evaluation.scoring import METRICS
from wpl_nas.spaces import Architecture
from wpl_nas.strategies import CandidateContext, Strategy
from wpl_nas.supernet import Supernet
from wpl_nas.training.augment import augment_crop_flip
from wpl_nas.training.precision import autocast, load_scaler_state, to_format

__all__ = ["CandidateTrainer", "TrainResult"]

#: Called after each epoch with ``(epoch, score)``; returns True to stop (Optuna pruning).
EpochCallback = Callable[[int, float], bool]


@dataclass
class TrainResult:
    """What training one candidate produced."""

    score: float = float("nan")  # on the fixed evaluation set, after the last epoch run
    epoch_scores: list[float] = field(default_factory=list)  # one per epoch scored, the last perhaps partial
    loss: float = float("nan")  # mean training loss of the last epoch (or part of one) run
    penalty: float = 0.0  # the strategy's penalty at the end of the last epoch
    steps: int = 0
    seconds: float = 0.0
    pruned: bool = False


class CandidateTrainer:
    """Trains candidates one after another on one supernet, with a strategy's hooks.

    One SGD optimiser holds every supernet weight for the whole search; weights off the
    current path get no gradient (``None``), so the optimiser leaves them, and their momentum,
    untouched. Call order per candidate: :meth:`train`, then :meth:`consolidate`.

    Args:
        supernet: The supernet (already on ``device``).
        strategy: The consolidation strategy (already on ``device``).
        train_set: Training split. One held in memory (a TensorDataset, or uint8 ImageTensors) is
            moved to ``device`` once and sliced there; any other is streamed (``workers``).
        held_out: Validation split, carved from the training data: Fisher and the like (likewise).
        eval_set: ``(x, y)`` fixed evaluation subset on ``device``: every score.
        optimizer: The optimiser of ``supernet.parameters()``.
        batch_size: Training batch size.
        epochs: Epochs per candidate (unless ``steps`` is given).
        grad_clip: Global gradient-norm clip (0: off), applied after the strategy's gradient edits.
        eval_batch_size: Evaluation batch size.
        seed: Base seed; each candidate's data order is seeded by ``(seed, trial_index)`` so a
            resumed search sees exactly the batches an uninterrupted one would. A search passes
            the candidate's position (how many candidates trained before it), not its Optuna
            trial number, so a trial lost in flight does not shift the ones after it.
        metric: The score (:data:`~wpl_nas.evaluation.scoring.METRICS`): ``accuracy`` or ``perplexity``.
        steps: A budget of optimiser steps per candidate instead of ``epochs`` (0: ``epochs`` whole
            epochs). Training then crosses epoch boundaries (each epoch with the data order it has
            without a budget) and stops part way through the last one; the candidate is scored at
            the end of every epoch it starts, the last one partial.
        precision: A resolved precision (:func:`~wpl_nas.training.precision.resolve_precision`):
            ``fp32``, or ``bf16``/``fp16`` autocast around every forward pass (training, scores,
            the strategy's consolidation), fp16 with a gradient scaler.
        channels_last: Put 4-D input batches in the channels_last memory format (the caller
            converts the supernet: :func:`~wpl_nas.assembly.assemble`).
        augment: Random crops (4-pixel zero padding) and horizontal flips of every training batch, on
            the device, drawn from the candidate's seeded generator (images only).
        workers: Processes decoding a streamed split's batches (0: the main process); unused for
            data held in memory.
        epoch_scores: Score the candidate after every epoch it runs (what ``on_epoch`` reports and a
            pruner reads); False scores it after its last epoch only: the same weights and final
            score, without the earlier epochs' evaluations.
        world: The processes that train each batch together (:mod:`wpl_nas.distributed`): each takes
            its slice of every batch and the gradients are summed over them [default: this process
            alone]. The scores after each epoch are divided among them too (each takes a share of the
            evaluation batches, :meth:`score`); consolidation is not: every process computes it whole.

    Raises:
        ConfigError: ``augment`` on inputs that are not images ``(N, C, H, W)``, or ``workers`` < 0.
    """

    def __init__(self, supernet: Supernet, strategy: Strategy, *, train_set: Dataset[Any],
                 held_out: Dataset[Any], eval_set: tuple[torch.Tensor, torch.Tensor],
                 optimizer: torch.optim.Optimizer, batch_size: int, epochs: int, grad_clip: float,
                 eval_batch_size: int, seed: int, metric: str = "accuracy", steps: int = 0,
                 precision: str = "fp32", channels_last: bool = False, augment: bool = False,
                 workers: int = 0, world: World | None = None, epoch_scores: bool = True) -> None:
        device = next(supernet.parameters()).device
        if augment and eval_set[0].dim() != 4:
            raise ConfigError(f"augment (random crops and flips) needs images, inputs of shape (C, H, W), but these "
                              f"inputs are {tuple(eval_set[0].shape[1:])}; use --no-augment")
        if workers < 0:
            raise ConfigError(f"workers must be >= 0 (0: decode in the main process), but got {workers=}")
        self.device = device
        self.supernet = supernet
        self.strategy = strategy
        # In memory: on the device, whole. Otherwise streamed: one loader per split, its workers kept
        # for the whole search.
        self.train_set = self._source(train_set, workers)
        self.held_out_set = self._source(held_out, workers)
        self.augment = augment_crop_flip if augment else None
        self.eval_x, self.eval_y = to_format(eval_set[0], channels_last), eval_set[1]
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.epochs = epochs
        self.grad_clip = grad_clip
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.metric = METRICS.get(metric)
        self.steps = steps
        self.precision = precision
        self.channels_last = channels_last
        self.world = world or World()
        self.epoch_scores = epoch_scores
        # fp16's narrow range underflows small gradients: scale the loss (bf16 has fp32's range).
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state: fp16's gradient scaler (its scale grows and backs off during the
        search, so a resumed search needs it); empty in fp32 and bf16."""
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`. A state without a scaler (a checkpoint from before it was saved, or
        from a run in another precision) leaves this one's as it is; a scaler's state when this trainer
        has none (the precision changed on resume) is ignored.

        Raises:
            ValueError: the scaler's state is out of range (a damaged or forged checkpoint).
        """
        saved = state.get("scaler")
        if self.scaler is not None and saved:
            load_scaler_state(self.scaler, saved)

    @property
    def steps_per_epoch(self) -> int:
        """Training steps of one whole epoch."""
        return -(-len(self.train_set) // self.batch_size)  # type: ignore[arg-type]

    def _source(self, dataset: Dataset[Any], workers: int) -> Dataset[Any] | StreamedBatches:
        if in_memory(dataset):
            return on_device(dataset, self.device)
        return StreamedBatches(dataset, workers=workers, device=self.device)

    @staticmethod
    def batches(source: Dataset[Any] | StreamedBatches, *, batch_size: int, generator: torch.Generator,
                limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled ``(inputs, labels)`` batches of ``train_set`` or ``held_out_set``, on the device,
        normalised: sliced from memory, or streamed. Either way the order is one ``torch.randperm``
        drawn from ``generator`` when called, so it depends on the generator state only."""
        if isinstance(source, StreamedBatches):
            order = torch.randperm(len(source), generator=generator)
            return source.batches(order, batch_size=batch_size, limit=limit)
        return iterate_batches(source, batch_size=batch_size, shuffle=True, generator=generator, limit=limit)

    @property
    def total_steps(self) -> int:
        """Training steps per candidate: the ``steps`` budget, or ``epochs`` whole epochs."""
        return self.steps or self.epochs * self.steps_per_epoch

    @property
    def planned_epochs(self) -> int:
        """Epochs a candidate starts: ``epochs``, or as many as the ``steps`` budget reaches into."""
        return -(-self.steps // self.steps_per_epoch) if self.steps else self.epochs

    def _generator(self, trial_index: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + trial_index) * 2 + salt)

    def context(self, arch: Architecture, trial_index: int) -> CandidateContext:
        return CandidateContext(self.supernet, arch, trial_index, self.supernet.parameters_of(arch),
                                self.optimizer, epochs=self.planned_epochs, steps_per_epoch=self.steps_per_epoch,
                                total_steps=self.steps, scaler=self.scaler)

    def score(self, arch: Architecture, *, world: World | None = None) -> float:
        """The metric (accuracy, or perplexity) of ``arch`` on the fixed evaluation set.

        Args:
            arch: The candidate.
            world: The processes that take this score *together*, each on its share of the evaluation
                batches (:func:`~wpl_nas.evaluation.scoring.accuracy`): a collective, so every process of
                ``world`` must call it at the same point with the same ``arch`` and weights, or they wait
                for each other forever or mix candidates. Only :meth:`train` passes it, for the candidate
                they all train; a score one process takes alone (the final selection, a catch-up, the
                commands other than search) or that differs between them (the pool's re-scores, each
                rank its own members: :meth:`World.divide`) passes none [default: this process alone,
                on every batch].
        """
        # A single process calls the metric as it always has (a metric registered without ``world`` works).
        together = {"world": world} if world is not None and world.distributed else {}
        with autocast(self.device, self.precision):
            return self.metric.compute(self.supernet, arch, self.eval_x, self.eval_y,
                                       batch_size=self.eval_batch_size, **together)

    def train(self, arch: Architecture, *, trial_index: int, on_epoch: EpochCallback | None = None,
              progress: Callable[[], object] | None = None, name: str | None = None) -> TrainResult:
        """Train ``arch`` for ``epochs`` epochs, or ``steps`` steps; score it after each epoch started
        (after the last one only without ``epoch_scores``).

        Raises:
            TrainingDiverged: the training loss of an epoch is NaN or infinite.

        Args:
            arch: The candidate.
            trial_index: Its position in the search (seeds its data order; strategies see it).
            on_epoch: Called with ``(epoch, score)`` after each epoch scored (the last of a step
                budget perhaps partial); True stops training.
            progress: Called after every training step (e.g. to advance a progress bar).
            name: What error messages call the candidate [default: ``trial <trial_index>``]; a search
                passes its Optuna trial number, which a lost trial sets apart from the position.
        """
        net, strategy, opt = self.supernet, self.strategy, self.optimizer
        ctx = self.context(arch, trial_index)
        result = TrainResult()
        start = time.perf_counter()
        net.set_arch(arch)
        net.train()
        strategy.before_candidate(ctx)
        gen = self._generator(trial_index, 0)
        for epoch in range(ctx.epochs):
            ctx.epoch = epoch
            # A budget's last epoch stops part way; its batches are the first of that epoch's order.
            limit = ctx.steps_in_epoch(epoch) if self.steps else None
            result.loss, steps = self.run_epoch(ctx, gen, progress=progress, limit=limit)
            if not math.isfinite(result.loss):
                # NaN weights would poison every later candidate: stop before anything is saved.
                raise TrainingDiverged(
                    f"candidate {arch} ({name or f'trial {trial_index}'}) diverged in epoch {epoch}: its mean "
                    f"training loss is {result.loss}; lower --lr, or clip gradients harder with --grad-clip")
            result.penalty = strategy.penalty(ctx) or 0.0
            result.steps += steps
            if not self.epoch_scores and epoch < ctx.epochs - 1:
                continue  # scoring reads the weights and changes nothing: skipping it trains alike
            # Every rank is here with the same candidate and weights: they divide its evaluation batches.
            result.score = self.score(arch, world=self.world)
            result.epoch_scores.append(result.score)
            if on_epoch is not None and on_epoch(epoch, result.score):
                result.pruned = True
                break
        opt.zero_grad(set_to_none=True)
        ctx.batch = None
        result.seconds = time.perf_counter() - start
        return result

    def run_epoch(self, ctx: CandidateContext, generator: torch.Generator, *,
                  progress: Callable[[], object] | None = None,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  after_step: Callable[[], object] | None = None, limit: int | None = None) -> tuple[float, int]:
        """One pass over the training split in the order ``generator`` draws, with the strategy's
        hooks: the inner loop of :meth:`train`, public for callers that run epochs themselves
        (retraining, which resumes mid-way and steps a learning-rate schedule).

        Args:
            ctx: The candidate's context (:meth:`context`); its ``epoch`` is the caller's to set.
            generator: Draws the batch order (and ``augment``'s randomness).
            progress: Called after every step.
            augment: Applied to each input batch before the forward pass [default: the trainer's
                ``augment``: crops and flips, or none].
            after_step: Called after every optimiser step (e.g. a schedule's ``step``).
            limit: Stop after this many steps (a step budget's last epoch) [default: the whole epoch].

        Returns:
            The epoch's mean training loss and its number of steps.
        """
        net, strategy, opt = self.supernet, self.strategy, self.optimizer
        path = list(ctx.params.values())
        loss_sum = torch.zeros((), device=self.eval_y.device)  # summed on the device: no sync per step
        steps = 0
        scaler, world = self.scaler, self.world
        augment = augment or self.augment
        for x, y in self.batches(self.train_set, batch_size=self.batch_size, generator=generator, limit=limit):
            if augment is not None:
                x = augment(x, generator)
            x = to_format(x, self.channels_last)
            ctx.step, ctx.batch = steps, (x, y)
            opt.zero_grad(set_to_none=True)
            if world.distributed:
                # This rank's slice of the global batch; its summed loss over the global size, summed
                # over the ranks with the gradients below, is the global batch's mean.
                start, stop = world.bounds(len(y))
                with autocast(self.device, self.precision), world.global_batch_norm():
                    loss = F.cross_entropy(net(x[start:stop]), y[start:stop], reduction="sum") / len(y)
            else:
                with autocast(self.device, self.precision):
                    loss = F.cross_entropy(net(x), y)
            if scaler is None:
                loss.backward()
            else:
                scaler.scale(loss).backward()
            # Summed over the ranks before the scaler's overflow check, the strategy's edits and
            # clipping, which so see the global batch's gradient, as in a single process.
            if world.distributed:
                world.all_reduce_gradients([*path, *strategy.trainable_tensors()])
            if scaler is not None:
                # Unscaled before the strategy edits the gradients and before clipping: both work on
                # true gradients (the scaler's documented order for clipping).
                scaler.unscale_(opt)
            with autocast(self.device, self.precision):  # a strategy's own forward passes (replay) too
                strategy.after_backward(ctx)
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(path, self.grad_clip, foreach=True)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)  # skipped when the scaled gradients overflowed; the scale then shrinks
                scaler.update()
            strategy.after_step(ctx)
            if after_step is not None:
                after_step()
            loss_sum += loss.detach()
            steps += 1
            if progress is not None:
                progress()
        world.all_reduce_(loss_sum)  # each rank summed its slice's share of every batch's mean
        return loss_sum.item() / max(steps, 1), steps

    def consolidate(self, arch: Architecture, *, trial_index: int, score: float | None = None) -> None:
        """Let the strategy consolidate the freshly trained ``arch`` (after :meth:`train`).

        Args:
            arch: The candidate just trained.
            trial_index: Its position in the search.
            score: Its score right after training (bounded strategies keep the best ones; they
                see it as a quality, higher is better, whatever the metric).
        """
        gen = self._generator(trial_index, 1)

        def held_out(batch_size: int, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return ((to_format(x, self.channels_last), y) for x, y in self.batches(
                self.held_out_set, batch_size=batch_size, generator=gen, limit=num_batches))

        ctx = self.context(arch, trial_index)
        ctx.score = None if score is None else self.metric.quality(score)
        with self.supernet.use(arch), autocast(self.device, self.precision):
            self.strategy.after_candidate(ctx, held_out)
